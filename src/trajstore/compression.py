"""Per-group compression and chunking policy."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Literal

from trajstore.bounds import MAX_TARGET_CHUNK_BYTES

__all__ = ["DEFAULT_TARGET_CHUNK_BYTES", "Compression"]

#: Default chunk size. Small enough that one random frame of a compressed
#: trajectory decompresses in well under a millisecond, large enough that
#: HDF5's per-chunk cost is negligible when streaming.
DEFAULT_TARGET_CHUNK_BYTES = 1 << 18  # 256 KiB

_LEVELS = {"zstd": (1, 22), "gzip": (0, 9), "lzf": (0, 0)}


@dataclass(frozen=True)
class Compression:
    """HDF5 compression and chunking policy for one logging group.

    Chunks hold about ``target_chunk_bytes`` each: many frames of a small
    leaf, one frame of a mid-sized leaf, and a slab of one frame of a leaf
    larger than the target (so a partial read of a huge frame stays cheap).

    Args:
        codec: ``"zstd"`` (through hdf5plugin; readers need hdf5plugin or
            ``HDF5_PLUGIN_PATH``), ``"gzip"`` or ``"lzf"``.
        level: 1-22 for zstd, 0-9 for gzip; ignored for lzf.
        shuffle: Apply HDF5's byte-shuffle filter first (helps floats).
        target_chunk_bytes: Approximate bytes per chunk.
    """

    codec: Literal["zstd", "gzip", "lzf"] = "zstd"
    level: int = 1
    shuffle: bool = True
    target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES

    def __post_init__(self) -> None:
        if self.codec not in _LEVELS:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {sorted(_LEVELS)}")
        level = operator.index(self.level)
        low, high = _LEVELS[self.codec]
        if self.codec != "lzf" and not low <= level <= high:
            raise ValueError(f"{self.codec} level must lie in [{low}, {high}], got {level}")
        if not 1 <= operator.index(self.target_chunk_bytes) <= MAX_TARGET_CHUNK_BYTES:
            raise ValueError(
                f"target_chunk_bytes must lie in [1, {MAX_TARGET_CHUNK_BYTES}] "
                f"(HDF5 chunks stay under 4 GiB), got {self.target_chunk_bytes}"
            )

    def filter_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``h5py.Group.create_dataset`` that set the filters."""
        kwargs: dict[str, Any] = {"shuffle": self.shuffle}
        if self.codec == "zstd":
            import hdf5plugin  # registers the filter with HDF5

            kwargs.update(hdf5plugin.Zstd(clevel=self.level))
        elif self.codec == "gzip":
            kwargs.update(compression="gzip", compression_opts=self.level)
        else:
            kwargs["compression"] = "lzf"
        return kwargs

    def to_json(self) -> dict[str, Any]:
        """Describe the policy for the file and the wire."""
        return {
            "codec": self.codec,
            "level": self.level,
            "shuffle": self.shuffle,
            "target_chunk_bytes": self.target_chunk_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Compression | None:
        """Inverse of :meth:`to_json`; ``None`` stays ``None`` (no compression)."""
        if data is None:
            return None
        return cls(
            codec=data["codec"],
            level=int(data["level"]),
            shuffle=bool(data["shuffle"]),
            target_chunk_bytes=int(data["target_chunk_bytes"]),
        )
