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
    # 4: flows, microbursts, DNS and TCP health, one set of rows per heartbeat (deleted with
    #    it, so they share the heartbeats' retention). Raw readings as the agent sent them;
    #    the monotonic totals live in `series` like the interface counters. Histograms keep
    #    bounds and per-bucket counts as JSON arrays (exact: integers and repr floats).
    """
    CREATE TABLE flow_samples (
        heartbeat_id  INTEGER PRIMARY KEY REFERENCES heartbeats (heartbeat_id) ON DELETE CASCADE,
        active        INTEGER NOT NULL,
        capacity      INTEGER NOT NULL,
        created_total INTEGER NOT NULL,
        ended_total   INTEGER NOT NULL,
        lost_total    INTEGER NOT NULL,
        evicted_total INTEGER NOT NULL
    );
    CREATE TABLE talkers (
        heartbeat_id INTEGER NOT NULL REFERENCES heartbeats (heartbeat_id) ON DELETE CASCADE,
        rank         INTEGER NOT NULL,
        interface    TEXT NOT NULL,
        direction    TEXT NOT NULL CHECK (direction IN ('rx', 'tx')),
        ip_version   INTEGER NOT NULL,
        l4_proto     INTEGER NOT NULL,
        src_addr     TEXT NOT NULL,
        dst_addr     TEXT NOT NULL,
        src_port     INTEGER NOT NULL,
        dst_port     INTEGER NOT NULL,
        vlan_id      INTEGER NOT NULL,
        packets      INTEGER NOT NULL,
        bytes        INTEGER NOT NULL,
        tcp_flags    INTEGER NOT NULL,
        PRIMARY KEY (heartbeat_id, rank)
    ) WITHOUT ROWID;
    CREATE TABLE microbursts (
        heartbeat_id INTEGER NOT NULL REFERENCES heartbeats (heartbeat_id) ON DELETE CASCADE,
        interface    TEXT NOT NULL,
        direction    TEXT NOT NULL CHECK (direction IN ('rx', 'tx')),
        window_ms    INTEGER NOT NULL,
        max_packets  INTEGER NOT NULL,
        max_bytes    INTEGER NOT NULL,
        PRIMARY KEY (heartbeat_id, interface, direction, window_ms)
    ) WITHOUT ROWID;
    CREATE TABLE dns_samples (
        heartbeat_id     INTEGER PRIMARY KEY REFERENCES heartbeats (heartbeat_id)
                         ON DELETE CASCADE,
        unanswered_total INTEGER NOT NULL,
        malformed_total  INTEGER NOT NULL
    );
    CREATE TABLE dns_counts (
        heartbeat_id INTEGER NOT NULL REFERENCES heartbeats (heartbeat_id) ON DELETE CASCADE,
        what         TEXT NOT NULL CHECK (what IN ('qtype', 'rcode')),
        key          TEXT NOT NULL,
        count        INTEGER NOT NULL,
        PRIMARY KEY (heartbeat_id, what, key)
    ) WITHOUT ROWID;
    CREATE TABLE dns_names (
        heartbeat_id INTEGER NOT NULL REFERENCES heartbeats (heartbeat_id) ON DELETE CASCADE,
        list         TEXT NOT NULL CHECK (list IN ('queried', 'failing')),
        rank         INTEGER NOT NULL,
        name         TEXT NOT NULL,
        count        INTEGER NOT NULL,
        PRIMARY KEY (heartbeat_id, list, rank)
    ) WITHOUT ROWID;
    CREATE TABLE tcp_samples (
        heartbeat_id              INTEGER PRIMARY KEY REFERENCES heartbeats (heartbeat_id)
                                  ON DELETE CASCADE,
        attempts_unanswered_total INTEGER NOT NULL,
        resets_rx                 INTEGER NOT NULL,
        resets_tx                 INTEGER NOT NULL,
        retransmits_total         INTEGER NOT NULL,
        zero_windows_total        INTEGER NOT NULL,
        malformed_total           INTEGER NOT NULL
    );
    CREATE TABLE histogram_samples (
        heartbeat_id   INTEGER NOT NULL REFERENCES heartbeats (heartbeat_id) ON DELETE CASCADE,
        histogram      TEXT NOT NULL
                       CHECK (histogram IN ('dns_latency', 'tcp_syn_rtt', 'tcp_synack_rtt')),
        bounds_seconds TEXT NOT NULL,
        counts         TEXT NOT NULL,
        sum_seconds    REAL NOT NULL,
        PRIMARY KEY (heartbeat_id, histogram)
    ) WITHOUT ROWID;
    """,
    # 5: appliance updates. The agent's running image and last update outcome (latest only,
    #    on its row: image_report.py), and the bundles an operator offered (update_offers.py).
    """
    ALTER TABLE agents ADD COLUMN image_version TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN image_digest TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN image_slot TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN update_result TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN update_reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN update_from_version TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN update_to_version TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN update_at REAL NOT NULL DEFAULT 0;
    CREATE TABLE update_offers (
        offer_id     INTEGER PRIMARY KEY,
        version      TEXT NOT NULL,
        sha256       TEXT NOT NULL,
        size         INTEGER NOT NULL,
        apply_at     TEXT NOT NULL,
        targets      TEXT NOT NULL DEFAULT '',
        published_at REAL NOT NULL,
        withdrawn_at REAL
    );
    """,
    # 6: a heartbeat's samples (interfaces, event kinds, events, flow/DNS/TCP parts) packed
    #    into one JSON text on its own row (`store_samples.py`: one INSERT instead of a row
    #    per sample). Existing rows are packed, and the old tables become views of the same
    #    names and columns, so every reader (start-up, /metrics, SQL) reads what it read
    #    before and retention deletes the samples with their heartbeat; `events.event_id` is
    #    heartbeat_id * 1024 + the event's place (at most 1024 per heartbeat). Needs SQLite
    #    >= 3.38 (JSON functions and ->>).
    """
    ALTER TABLE heartbeats ADD COLUMN samples TEXT NOT NULL DEFAULT '{}';
    UPDATE heartbeats SET samples = json_patch('{}', json_object(
        'i', json((SELECT json_group_array(json_array(ifname, ifindex, rx_packets, rx_bytes,
                   tx_packets, tx_bytes)) FROM (SELECT * FROM interface_samples s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id ORDER BY ifname))),
        'k', json((SELECT json_group_array(json_array(kind, events, ringbuf_drops))
                   FROM (SELECT * FROM kind_samples s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id ORDER BY kind))),
        'e', json((SELECT nullif(json_group_array(json_array(ts_unix_ns, ifindex, direction,
                   kind, pkt_len, ip_version, l4_proto, src_port, dst_port, src_addr, dst_addr,
                   tcp_flags, vlan_tags, eth_proto, seq)), '[]')
                   FROM (SELECT * FROM events s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id ORDER BY event_id))),
        'f', json((SELECT json_array(active, capacity, created_total, ended_total, lost_total,
                   evicted_total) FROM flow_samples s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id)),
        't', json((SELECT nullif(json_group_array(json_array(interface, direction, ip_version,
                   l4_proto, src_addr, dst_addr, src_port, dst_port, vlan_id, packets, bytes,
                   tcp_flags)), '[]') FROM (SELECT * FROM talkers s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id ORDER BY rank))),
        'm', json((SELECT nullif(json_group_array(json_array(interface, direction, window_ms,
                   max_packets, max_bytes)), '[]') FROM microbursts s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id)),
        'd', json((SELECT json_array(unanswered_total, malformed_total) FROM dns_samples s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id)),
        'dc', json((SELECT nullif(json_group_array(json_array(what, key, count)), '[]')
                    FROM (SELECT * FROM dns_counts s
                    WHERE s.heartbeat_id = heartbeats.heartbeat_id ORDER BY what, key))),
        'n', json((SELECT nullif(json_group_array(json_array(list, rank, name, count)), '[]')
                   FROM (SELECT * FROM dns_names s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id ORDER BY list, rank))),
        'c', json((SELECT json_array(attempts_unanswered_total, resets_rx, resets_tx,
                   retransmits_total, zero_windows_total, malformed_total) FROM tcp_samples s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id)),
        'h', json((SELECT nullif(json_group_array(json_array(histogram, bounds_seconds, counts,
                   sum_seconds)), '[]') FROM histogram_samples s
                   WHERE s.heartbeat_id = heartbeats.heartbeat_id))
    ));
    DROP TABLE events;
    DROP TABLE interface_samples;
    DROP TABLE kind_samples;
    DROP TABLE flow_samples;
    DROP TABLE talkers;
    DROP TABLE microbursts;
    DROP TABLE dns_samples;
    DROP TABLE dns_counts;
    DROP TABLE dns_names;
    DROP TABLE tcp_samples;
    DROP TABLE histogram_samples;
    CREATE VIEW interface_samples
        (heartbeat_id, ifname, ifindex, rx_packets, rx_bytes, tx_packets, tx_bytes) AS
        SELECT h.heartbeat_id, e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3,
            e.value ->> 4, e.value ->> 5
        FROM heartbeats h, json_each(h.samples, '$.i') e;
    CREATE VIEW events (event_id, heartbeat_id, agent_id, ts_unix_ns, ifindex, direction, kind,
        pkt_len, ip_version, l4_proto, src_port, dst_port, src_addr, dst_addr, tcp_flags,
        vlan_tags, eth_proto, seq) AS
        SELECT h.heartbeat_id * 1024 + e.key, h.heartbeat_id, h.agent_id, e.value ->> 0,
            e.value ->> 1, e.value ->> 2, e.value ->> 3, e.value ->> 4, e.value ->> 5,
            e.value ->> 6, e.value ->> 7, e.value ->> 8, e.value ->> 9, e.value ->> 10,
            e.value ->> 11, e.value ->> 12, e.value ->> 13, e.value ->> 14
        FROM heartbeats h, json_each(h.samples, '$.e') e;
    CREATE VIEW kind_samples (heartbeat_id, kind, events, ringbuf_drops) AS
        SELECT h.heartbeat_id, e.value ->> 0, e.value ->> 1, e.value ->> 2
        FROM heartbeats h, json_each(h.samples, '$.k') e;
    CREATE VIEW flow_samples (heartbeat_id, active, capacity, created_total, ended_total,
        lost_total, evicted_total) AS
        SELECT heartbeat_id, samples ->> '$.f[0]', samples ->> '$.f[1]', samples ->> '$.f[2]',
            samples ->> '$.f[3]', samples ->> '$.f[4]', samples ->> '$.f[5]'
        FROM heartbeats WHERE json_type(samples, '$.f') = 'array';
    CREATE VIEW talkers (heartbeat_id, rank, interface, direction, ip_version, l4_proto,
        src_addr, dst_addr, src_port, dst_port, vlan_id, packets, bytes, tcp_flags) AS
        SELECT h.heartbeat_id, e.key + 1, e.value ->> 0, e.value ->> 1, e.value ->> 2,
            e.value ->> 3, e.value ->> 4, e.value ->> 5, e.value ->> 6, e.value ->> 7,
            e.value ->> 8, e.value ->> 9, e.value ->> 10, e.value ->> 11
        FROM heartbeats h, json_each(h.samples, '$.t') e;
    CREATE VIEW microbursts (heartbeat_id, interface, direction, window_ms, max_packets,
        max_bytes) AS
        SELECT h.heartbeat_id, e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3,
            e.value ->> 4
        FROM heartbeats h, json_each(h.samples, '$.m') e;
    CREATE VIEW dns_samples (heartbeat_id, unanswered_total, malformed_total) AS
        SELECT heartbeat_id, samples ->> '$.d[0]', samples ->> '$.d[1]'
        FROM heartbeats WHERE json_type(samples, '$.d') = 'array';
    CREATE VIEW dns_counts (heartbeat_id, what, key, count) AS
        SELECT h.heartbeat_id, e.value ->> 0, e.value ->> 1, e.value ->> 2
        FROM heartbeats h, json_each(h.samples, '$.dc') e;
    CREATE VIEW dns_names (heartbeat_id, list, rank, name, count) AS
        SELECT h.heartbeat_id, e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3
        FROM heartbeats h, json_each(h.samples, '$.n') e;
    CREATE VIEW tcp_samples (heartbeat_id, attempts_unanswered_total, resets_rx, resets_tx,
        retransmits_total, zero_windows_total, malformed_total) AS
        SELECT heartbeat_id, samples ->> '$.c[0]', samples ->> '$.c[1]', samples ->> '$.c[2]',
            samples ->> '$.c[3]', samples ->> '$.c[4]', samples ->> '$.c[5]'
        FROM heartbeats WHERE json_type(samples, '$.c') = 'array';
    CREATE VIEW histogram_samples (heartbeat_id, histogram, bounds_seconds, counts,
        sum_seconds) AS
        SELECT h.heartbeat_id, e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3
        FROM heartbeats h, json_each(h.samples, '$.h') e;
    """,
    # 7: an agent's series totals packed into one row (`store_series.py`: one statement per
    #    heartbeat instead of an upsert per changed series, up to about 150). `keys` is a JSON
    #    array of the stored keys, `totals` a flat JSON array of last_raw, total per key.
    #    Existing rows are packed, and `series` becomes a view of the same name and columns.
    #    Both aggregates read the rows in one pass, so keys and totals stay aligned.
    """
    CREATE TABLE series_totals (
        agent_id TEXT PRIMARY KEY REFERENCES agents (agent_id),
        keys     TEXT NOT NULL,
        totals   TEXT NOT NULL
    );
    INSERT INTO series_totals (agent_id, keys, totals)
        SELECT agent_id, json_group_array(key),
            '[' || group_concat(last_raw || ',' || total, ',') || ']'
        FROM (SELECT * FROM series ORDER BY agent_id, key) GROUP BY agent_id;
    DROP TABLE series;
    CREATE VIEW series (agent_id, key, last_raw, total) AS
        SELECT s.agent_id, k.value, s.totals ->> (2 * k.key), s.totals ->> (2 * k.key + 1)
        FROM series_totals s, json_each(s.keys) k;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
