"""The key cache on shared storage with quotas: list its entries, remove the ones named.

    python -m experiments.cache list                     # one line per entry
    python -m experiments.cache remove NAME [NAME ...]   # entry folder names, as `list` prints them

The cache dir is `--cache-dir`, else `paths.cache_dir` of `conf/config.yaml` (so `$KEYSPACE_CACHE_DIR`
when set). An entry is complete for a layer when every shard has that layer's keys; `list` shows the
layers complete everywhere and those only partly extracted (a killed or running job). `remove` takes the
entry's lock first, so an entry that a job is extracting into is never deleted under it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from experiments.store import KeyStore

CONFIG = Path(__file__).resolve().parents[2] / "conf" / "config.yaml"


@dataclass
class EntryInfo:
    name: str
    model: str
    benchmark: str
    site: str
    dtype: str
    samples: int
    layers: list[int]  # complete in every shard
    partial: list[int]  # present in some shards only
    bytes: int

    @property
    def complete(self) -> bool:
        return bool(self.layers) and not self.partial


def entries(cache_dir: Path) -> list[EntryInfo]:
    """Every entry under `<cache_dir>/keys`, by name."""
    found = []
    for folder in sorted((cache_dir / "keys").glob("*/")):
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        manifest = folder / "manifest.json"
        if not manifest.exists():  # killed before its first shard: nothing usable
            found.append(EntryInfo(folder.name, "?", "?", "?", "?", 0, [], [], size))
            continue
        body = json.loads(manifest.read_text())
        descriptor = body["descriptor"]
        coverage = KeyStore(cache_dir, descriptor, body["n_samples"]).layer_coverage()
        found.append(EntryInfo(folder.name, descriptor["model"]["name"], descriptor["benchmark"]["name"],
                               descriptor["site"], descriptor["store_dtype"], body["n_samples"],
                               [i for i, n in coverage.items() if n == body["n_shards"]],
                               [i for i, n in coverage.items() if n < body["n_shards"]], size))
    return found


def remove(cache_dir: Path, names: list[str]) -> None:
    """Delete the named entries, each under its lock.

    Raises:
        ValueError: a name is not an entry (the message lists the entries); nothing is removed then.
        filelock.Timeout: an entry is locked by a job extracting into it.
    """
    from filelock import FileLock

    known = {e.name for e in entries(cache_dir)}
    if unknown := [n for n in names if n not in known]:
        raise ValueError(f"no cache entry named {unknown} in {cache_dir / 'keys'}; entries: {sorted(known)}")
    for name in names:
        folder = cache_dir / "keys" / name
        with FileLock(str(folder / ".lock"), timeout=0):
            shutil.rmtree(folder)


def default_cache_dir() -> Path:
    """`paths.cache_dir` as `conf/config.yaml` resolves it (environment variable included)."""
    from omegaconf import OmegaConf

    return Path(OmegaConf.load(CONFIG).paths.cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.cache", description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: paths.cache_dir of conf/config.yaml")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="one line per entry")
    removal = commands.add_parser("remove", help="delete the named entries")
    removal.add_argument("names", nargs="+", help="entry folder names, as `list` prints them")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    if args.command == "remove":
        try:
            remove(cache_dir, args.names)
        except Exception as error:  # unknown name or an entry in use: say so, no traceback
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"removed {len(args.names)} entr{'y' if len(args.names) == 1 else 'ies'} from {cache_dir / 'keys'}")
        return 0
    found = entries(cache_dir)
    print(f"{len(found)} entries in {cache_dir / 'keys'}, {sum(e.bytes for e in found) / 2**30:.2f} GiB")
    for e in found:
        state = "complete" if e.complete else ("partial" if e.layers or e.partial else "empty")
        extra = f" (partly: {e.partial})" if e.partial else ""
        print(f"{e.name}  {e.model} / {e.benchmark}  {e.site} {e.dtype}  {e.samples} samples  layers {e.layers}"
              f"{extra}  {e.bytes / 2**20:.1f} MiB  {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
