"""The SQLite schema as an ordered list of migrations.

`PRAGMA user_version` records how many migrations a database has had. Opening
applies the missing ones in one transaction each, and refuses a database from
a newer control plane rather than guessing. Append migrations; never edit one
that has shipped.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: tokens, agents, heartbeats (time series of cumulative counters), events,
    #    and the monotonic export totals (see fleet.py) kept with each heartbeat.
    """
    CREATE TABLE tokens (
        token_id     TEXT PRIMARY KEY,
        kind         TEXT NOT NULL CHECK (kind IN ('bootstrap', 'agent')),
        digest       TEXT NOT NULL,
        agent_id     TEXT,
        name         TEXT NOT NULL DEFAULT '',
        created_at   REAL NOT NULL,
        revoked_at   REAL,
        last_used_at REAL
    );
    CREATE INDEX tokens_by_agent ON tokens (agent_id) WHERE agent_id IS NOT NULL;
    CREATE TABLE agents (
        agent_id          TEXT PRIMARY KEY,
        hostname          TEXT NOT NULL DEFAULT '',
        agent_version     TEXT NOT NULL DEFAULT '',
        kernel_version    TEXT NOT NULL DEFAULT '',
        registered_at     REAL NOT NULL,
        last_heartbeat_at REAL,
        uptime_seconds    REAL NOT NULL DEFAULT 0,
        heartbeats        INTEGER NOT NULL DEFAULT 0,
        resets            INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE heartbeats (
        heartbeat_id            INTEGER PRIMARY KEY,
        agent_id                TEXT NOT NULL REFERENCES agents (agent_id),
        received_at             REAL NOT NULL,
        uptime_seconds          REAL NOT NULL,
        agent_version           TEXT NOT NULL,
        kernel_version          TEXT NOT NULL,
        events_dropped_by_agent INTEGER NOT NULL
    );
    CREATE INDEX heartbeats_by_time ON heartbeats (received_at);
    CREATE INDEX heartbeats_by_agent ON heartbeats (agent_id, received_at);
    CREATE TABLE interface_samples (
        heartbeat_id INTEGER NOT NULL REFERENCES heartbeats (heartbeat_id) ON DELETE CASCADE,
        ifname       TEXT NOT NULL,
        ifindex      INTEGER NOT NULL,
        rx_packets   INTEGER NOT NULL,
        rx_bytes     INTEGER NOT NULL,
        tx_packets   INTEGER NOT NULL,
        tx_bytes     INTEGER NOT NULL,
        PRIMARY KEY (heartbeat_id, ifname)
    ) WITHOUT ROWID;
    CREATE TABLE kind_samples (
        heartbeat_id  INTEGER NOT NULL REFERENCES heartbeats (heartbeat_id) ON DELETE CASCADE,
        kind          TEXT NOT NULL,
        events        INTEGER NOT NULL,
        ringbuf_drops INTEGER NOT NULL,
        PRIMARY KEY (heartbeat_id, kind)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        event_id     INTEGER PRIMARY KEY,
        heartbeat_id INTEGER NOT NULL REFERENCES heartbeats (heartbeat_id) ON DELETE CASCADE,
        agent_id     TEXT NOT NULL,
        ts_unix_ns   INTEGER NOT NULL,
        ifindex      INTEGER NOT NULL,
        direction    TEXT NOT NULL,
        kind         TEXT NOT NULL,
        pkt_len      INTEGER NOT NULL,
        ip_version   INTEGER NOT NULL,
        l4_proto     INTEGER NOT NULL,
        src_port     INTEGER NOT NULL,
        dst_port     INTEGER NOT NULL,
        src_addr     TEXT NOT NULL,
        dst_addr     TEXT NOT NULL,
        tcp_flags    INTEGER NOT NULL,
        vlan_tags    INTEGER NOT NULL,
        eth_proto    INTEGER NOT NULL
    );
    CREATE INDEX events_by_heartbeat ON events (heartbeat_id);
    CREATE TABLE series (
        agent_id TEXT NOT NULL REFERENCES agents (agent_id),
        key      TEXT NOT NULL,
        last_raw INTEGER NOT NULL,
        total    INTEGER NOT NULL,
        PRIMARY KEY (agent_id, key)
    ) WITHOUT ROWID;
    """,
    # 2: event streams, so a resent batch (lost acknowledgement) is stored once.
    """
    CREATE TABLE event_streams (
        agent_id   TEXT NOT NULL,
        stream     TEXT NOT NULL,
        max_seq    INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (agent_id, stream)
    ) WITHOUT ROWID;
    ALTER TABLE events ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: identity. Bootstrap tokens gain an expiry and an optional use limit (NULL: none;
    #    tokens made before this migration keep never expiring, as they were created).
    #    Agents gain a state: `disabled` refuses the agent's tokens and its re-enrolment;
    #    `reset_allowed` lets one bootstrap enrolment take over an existing agent id.
    """
    ALTER TABLE tokens ADD COLUMN expires_at REAL;
    ALTER TABLE tokens ADD COLUMN max_uses INTEGER CHECK (max_uses IS NULL OR max_uses > 0);
    ALTER TABLE tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN state TEXT NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'disabled'));
    ALTER TABLE agents ADD COLUMN reset_allowed INTEGER NOT NULL DEFAULT 0
        CHECK (reset_allowed IN (0, 1));
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
