"""What every loader takes (`DatapathOptions`) and gives back (`LoadedDatapath`).

The libbpf and bcc loaders share these two types, so the manager, the read-out
and the benchmarks handle a loaded data plane the same way whichever loader made it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from sennet.agent.datapath import layout


@dataclass(frozen=True)
class DatapathOptions:
    """Load-time settings: where things live and the tunables baked into this load."""

    assets_dir: Path  # compiled objects (*.bpf.o) and the C sources for bcc
    pin_dir: Path  # on a bpf filesystem
    ringbuf_bytes: int  # power of two, multiple of the page size
    large_packet_bytes: int
    _: KW_ONLY  # table sizes by name: two ints side by side are easy to swap
    tcp_handshakes: int = layout.TCP_HANDSHAKES  # HANDSHAKES max_entries
    flow_capacity: int = layout.FLOW_CAPACITY_DEFAULT  # max_entries of the flow LRU
    features: layout.Feature = layout.FEATURES_ALL  # cfg_features: what runs after the counters
    # Load sennet_xdp (`attach = "xdp"`). Without it the verifier skips a third of the
    # object, about 0.6 s of every start under TCG; a previous run's XDP program is still
    # found and removed by its name.
    xdp: bool = True

    @property
    def object_path(self) -> Path:
        """The object the libbpf loaders load (the boot-time one included)."""
        return self.assets_dir / layout.OBJECT_NAME

    def map_sizes(self) -> dict[str, int]:
        """Sizes of the maps sized at load time (layout.SIZED_AT_LOAD), by map name."""
        return {layout.MAP_HANDSHAKES: self.tcp_handshakes, layout.MAP_FLOWS: self.flow_capacity}

    def load_spec(self) -> LoadSpec:
        """What a load sets between open and load. The Python loader and the boot-time
        loader's plan (early.py) both follow this, so the two cannot load differently."""
        return LoadSpec(
            pinned=(*layout.PINNED_MAPS, layout.MAP_EVENTS),
            max_entries={layout.MAP_EVENTS: self.ringbuf_bytes, **self.map_sizes()},
            tunables={
                layout.TUNABLE_LARGE_PACKET: self.large_packet_bytes,
                layout.TUNABLE_FEATURES: int(self.features),
            },
            # Without XDP the verifier skips a third of the object.
            skipped=() if self.xdp else (layout.PROGRAM_XDP,),
        )


@dataclass(frozen=True)
class LoadSpec:
    """Set between open and load: maps pinned under pin_dir (the ring buffer too, so events
    not read yet wait for the next agent), map sizes, `.rodata` tunables, programs left out."""

    pinned: tuple[str, ...]
    max_entries: dict[str, int]
    tunables: dict[str, int]
    skipped: tuple[str, ...]


@dataclass
class LoadedDatapath:
    """File descriptors of the loaded programs and maps; `close()` releases the loader's hold."""

    loader: str
    ingress_fd: int
    egress_fd: int
    map_fds: dict[str, int]
    ringbuf_bytes: int
    close: Callable[[], None] = field(repr=False)
    xdp_fd: int = -1  # sennet_xdp: the receive side when attached at XDP instead of TC
