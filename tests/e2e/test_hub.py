"""The users' first run, from the hub: `launch.py` against a Hugging Face Hub served on 127.0.0.1.

No machine here reaches the real hub, so `fixtures/local_hub.py` serves the repositories of the users' sweep
(`fixtures/hub_repos.py`: tiny weights under the real checkpoint layouts, real benchmark rows under the
published dataset layouts) and every run is a subprocess with `HF_ENDPOINT` pointing at it and an empty
`HF_HOME`. Checked: the users' command as written (test-local dirs, `logger=none` and `benchmark.limit` aside)
runs and aggregates, fetching only the benchmark files the jobs need; the same command with `HF_HUB_OFFLINE=1`
runs from the hub cache alone and extracts the same keys; MMBench-EN fetches only its language's split, from
its own copy or from the multi-language one; `model.revision` pins the checkpoint; a missing
repository, a missing file and a gated repository each end in one line saying what to do, no traceback.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import REPO, tiny_model_config
from ..fixtures import hub_repos
from ..fixtures.local_hub import RESOLVE, LocalHub

LLAVA, QWEN = "llava-hf/llava-1.5-7b-hf", "Qwen/Qwen2.5-VL-7B-Instruct"
MMBENCH, MMBENCH_EN, MMMU = "lmms-lab/MMBench_CN", "lmms-lab/MMBench_EN", "MMMU/MMMU"
GATED_MODEL, GATED_DATASET = "gated-org/llava-1.5-7b-hf", "gated-org/MMBench_CN"
MOVING = "keyspace-test/MMBench_moving"  # an MMBench-CN copy whose main moved on from tag v0 (the English rows)
SUBJECTS = ("Accounting", "Economics", "Finance")  # the MMMU subjects served (real shards)
OLD_DEPTH = 3  # decoder layers of the older LLaVA revision (the served main has 4)


def _build(name: str, cache_dir: Path, **text_config: int) -> Path:
    """Folder of the tiny random-weight build `name`, with `text_config` fields changed."""
    from experiments.models import get_adapter
    from experiments.models.random_init import ensure_random_checkpoint

    cfg = tiny_model_config(name, cache_dir)
    architecture = copy.deepcopy(cfg.architecture)
    architecture["text_config"].update(text_config)
    return ensure_random_checkpoint(get_adapter(cfg.family), dataclasses.replace(cfg, architecture=architecture))


@pytest.fixture(scope="module")
def hub(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """The hub of the users' sweep, plus an older LLaVA commit (tag v0), a branch without weights, gated copies."""
    served = LocalHub()
    served.add(LLAVA, hub_repos.llava_files(_build("tiny_llava", cache_dir, num_hidden_layers=OLD_DEPTH)), ref="v0")
    llava = hub_repos.llava_files(_build("tiny_llava", cache_dir))
    served.add(LLAVA, llava)
    served.add(LLAVA, {path: data for path, data in llava.items() if not path.startswith("model")}, ref="no-weights")
    served.add(GATED_MODEL, llava, gated=True)
    served.add(QWEN, hub_repos.qwen_files(_build("tiny_qwen", cache_dir)))
    workdir = tmp_path_factory.mktemp("mmbench")
    mmbench = hub_repos.mmbench_files(workdir, MMBENCH)
    served.add(MMBENCH, mmbench, repo_type="dataset")
    served.add(GATED_DATASET, mmbench, repo_type="dataset", gated=True)
    for repo in (MMBENCH_EN, hub_repos.MMBENCH_ALL):
        served.add(repo, hub_repos.mmbench_files(workdir, repo), repo_type="dataset")
    served.add(MMMU, hub_repos.mmmu_files(), repo_type="dataset")
    served.add(MOVING, hub_repos.mmbench_files(workdir, MMBENCH_EN), repo_type="dataset", ref="v0")
    served.add(MOVING, mmbench, repo_type="dataset")
    yield served.start()
    served.stop()


def _launch(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, env=env | {"OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=900)


def _sweep(tmp_path: Path, name: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    """The users' command as written, with its own sweep dir and key cache (`<name>`, `<name>-keys`)."""
    return _launch(["-m", "model=llava,qwen", "benchmark=mmbench_cn,mmmu", "logger=none", "benchmark.limit=4", *extra,
                    f"hydra.sweep.dir={tmp_path / name}", f"paths.cache_dir={tmp_path / f'{name}-keys'}"], env)


def _keys(cache: Path) -> dict[str, object]:
    """Every cached key tensor, by entry/file/tensor name."""
    from safetensors.torch import load_file

    return {f"{path.relative_to(cache)}:{name}": tensor for path in sorted(cache.glob("keys/*/*.layer-*.safetensors"))
            for name, tensor in load_file(path).items()}


@pytest.mark.slow
def test_users_sweep_runs_from_the_hub_then_offline_from_its_cache(hub, tmp_path):
    env = hub.env(HF_HOME=str(tmp_path / "hf"))
    online = _sweep(tmp_path, "online", env)
    assert online.returncode == 0, online.stderr[-3000:]
    for name in ("figure1_tsne.png", "figure2_boxplots.png", "summary.csv"):
        assert (tmp_path / "online" / name).stat().st_size > 1000, name
    assert "4 completed, 0 failed" in online.stdout

    assert hub.downloads(MMBENCH) == [hub_repos.MMBENCH_FILES[MMBENCH]["dev"]]  # not the test split, not the card
    assert sorted(hub.downloads(MMMU)) == [f"{s}/validation-00000-of-00001.parquet" for s in SUBJECTS]
    for repo, shards in ((LLAVA, 3), (QWEN, 5)):
        fetched = hub.downloads(repo)
        assert len(fetched) == len(set(fetched))  # each file once, then from the cache
        weights = {f"model-{k:05d}-of-{shards:05d}.safetensors" for k in range(1, shards + 1)}
        assert weights | {"config.json", "model.safetensors.index.json", "preprocessor_config.json",
                          "chat_template.json", "tokenizer.json"} <= set(fetched)
        assert not {"README.md", ".gitattributes"} & set(fetched)

    served = len(hub.requests)
    lean = ["analysis.n_splits=2", "metric.n_permutations=20", "report.tsne_points=80"]  # the hub is what is tested
    offline = _sweep(tmp_path, "offline", env | {"HF_HUB_OFFLINE": "1"}, *lean)
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert len(hub.requests) == served  # nothing asked of the hub
    assert (tmp_path / "offline" / "figure2_boxplots.png").exists()
    online_keys, offline_keys = _keys(tmp_path / "online-keys"), _keys(tmp_path / "offline-keys")
    assert len(online_keys) == 4 * 3 * 2 and online_keys.keys() == offline_keys.keys()  # jobs x layers x (keys, norms)
    assert all(online_keys[k].equal(offline_keys[k]) for k in online_keys)  # same checkpoints, same keys


# Loads the samples of `<overrides>` as a job does (argv: conf dir, overrides); prints their ids and first prompt.
SAMPLES_PROBE = """
import json, sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from experiments.benchmarks import load_samples
from experiments.config import register_configs
register_configs()
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = OmegaConf.to_object(compose("config", overrides=sys.argv[2:])).benchmark
samples = load_samples(cfg).samples
print(json.dumps({"ids": [s.id for s in samples], "prompt": samples[0].text}))
"""


@pytest.mark.parametrize(("path", "fetched"), [
    (None, [hub_repos.MMBENCH_FILES[MMBENCH_EN]["dev"]]),
    (hub_repos.MMBENCH_ALL, ["en/dev-00000-of-00001.parquet"]),
], ids=["MMBench_EN", "MMBench-en"])
def test_mmbench_en_fetches_only_the_english_dev_split(hub, tmp_path, path, fetched):
    repo = path or MMBENCH_EN
    before = len(hub.downloads(repo))
    overrides = ["benchmark=mmbench_en", "benchmark.limit=3", *([f"benchmark.path={path}"] if path else [])]
    done = subprocess.run([sys.executable, "-c", SAMPLES_PROBE, str(REPO / "conf"), *overrides], cwd=REPO,
                          env=hub.env(HF_HOME=str(tmp_path / "hf")), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(loaded["ids"]) == 3 and loaded["prompt"].startswith(("Question: ", "Hint: "))
    assert loaded["prompt"].isascii()  # the English rows, not the Chinese ones beside them in lmms-lab/MMBench
    assert hub.downloads(repo)[before:] == fetched  # not the test split, not the other language, not the card


# The samples of `<overrides>` as a job loads them, the dataset commit they came from and the key-cache entry.
DATA_PROBE = """
import json, sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from experiments.benchmarks import load_samples
from experiments.config import register_configs
from experiments.store import cache_descriptor, entry_name
register_configs()
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    job = OmegaConf.to_object(compose("config", overrides=sys.argv[2:]))
data = load_samples(job.benchmark)
print(json.dumps({"prompt": data.samples[0].text, "commit": data.commit,
                  "entry": entry_name(cache_descriptor(job, data.commit))}))
"""


def test_benchmark_revision_pins_the_dataset_and_the_cache_key_holds_its_commit(hub, tmp_path):
    """`benchmark.revision` reads that commit only; the key cache hashes the commit the revision resolves to, so
    the default branch and its head pinned share an entry and an older commit (other rows) gets its own."""
    env = hub.env(HF_HOME=str(tmp_path / "hf"))
    refs = hub.repos[("dataset", MOVING)].refs

    def probe(*overrides: str, path: str = MOVING) -> dict[str, str]:
        done = subprocess.run([sys.executable, "-c", DATA_PROBE, str(REPO / "conf"), "benchmark=mmbench_cn",
                               f"benchmark.path={path}", "benchmark.limit=2", *overrides], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    before = len(hub.requests)
    old = probe("benchmark.revision=v0")
    revisions = {m.group(3) for _, path in hub.requests[before:] if (m := RESOLVE.match(path))}
    assert revisions == {refs["v0"]} and old["commit"] == refs["v0"]
    assert old["prompt"].isascii()  # v0 held the English rows
    main, pinned = probe(), probe(f"benchmark.revision={refs['main']}")
    assert main["commit"] == pinned["commit"] == refs["main"] and not main["prompt"].isascii()
    assert main["entry"] == pinned["entry"] != old["entry"]
    local = tmp_path / "MMBench_CN"  # a local copy of main: no commit to hash
    for name, content in hub.repos[("dataset", MOVING)].commits[refs["main"]].items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(content)
    assert probe(path=str(local))["commit"] is None


# Loads the checkpoint of `model=llava <overrides>` as a job does (argv: conf dir, overrides); prints its depth.
LOAD_PROBE = """
import json, sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from experiments.config import register_configs
from experiments.models import decoder_depth, load_model
register_configs()
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = OmegaConf.to_object(compose("config", overrides=sys.argv[2:])).model
loaded = load_model(cfg)
print(json.dumps({"depth": decoder_depth(cfg), "layers": loaded.model.config.text_config.num_hidden_layers}))
"""


def test_model_revision_pins_the_checkpoint(hub, tmp_path):
    old = hub.repos[("model", LLAVA)].refs["v0"]  # pinned by commit id, as for a reproducible run
    env = hub.env(HF_HOME=str(tmp_path / "hf"))
    before = len(hub.requests)
    assert _load(env, f"model.revision={old}") == {"depth": OLD_DEPTH, "layers": OLD_DEPTH}
    revisions = {m.group(3) for _, path in hub.requests[before:] if (m := RESOLVE.match(path))}
    assert revisions == {old}  # every file of the pinned commit, none of main
    snapshots = tmp_path / "hf" / "hub" / "models--llava-hf--llava-1.5-7b-hf" / "snapshots"
    assert [p.name for p in snapshots.iterdir()] == [old]


# The key-cache entry of `model=llava <overrides>` (argv: conf dir, overrides), as a job names it.
ENTRY_PROBE = """
import sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from experiments.config import register_configs
from experiments.store import cache_descriptor, entry_name
register_configs()
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    job = OmegaConf.to_object(compose("config", overrides=sys.argv[2:]))
print(entry_name(cache_descriptor(job, None)))
"""


def test_cache_key_holds_the_commit_the_revision_resolves_to(hub, tmp_path):
    """Keys of the default branch are keyed by its head commit: the same entry as that commit pinned, another
    entry for another commit (a moving branch never serves keys of its old weights)."""
    env = hub.env(HF_HOME=str(tmp_path / "hf"))
    refs = hub.repos[("model", LLAVA)].refs

    def entry(*overrides: str) -> str:
        done = subprocess.run([sys.executable, "-c", ENTRY_PROBE, str(REPO / "conf"), "model=llava", *overrides],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    head = entry()
    assert head == entry(f"model.revision={refs['main']}") != entry(f"model.revision={refs['v0']}")


def test_gated_repository_loads_with_a_granted_token(hub, tmp_path):
    hub.granted.add("hf_granted")
    assert _load(hub.env(HF_HOME=str(tmp_path / "hf"), HF_TOKEN="hf_granted"), f"model.path={GATED_MODEL}") == {
        "depth": 4, "layers": 4}


def _load(env: dict[str, str], *overrides: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(REPO / "conf"), "model=llava", "model.device=cpu",
                           *overrides], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


ERRORS = {  # overrides, environment, what the one line must say
    "missing_repository": (["model.path=llava-hf/no-such-model"], {},
                           ["no model repository llava-hf/no-such-model", "hf auth login", "model.path=/path"]),
    "missing_file": (["model.revision=no-weights"], {},
                     ["at revision 'no-weights'", "model.safetensors", "model.path=/path"]),
    "gated_without_token": ([f"model.path={GATED_MODEL}"], {},
                            ["is a gated repository (HTTP 401)", "hf auth login", "HF_TOKEN", "model.path=/path"]),
    "gated_token_without_access": ([f"model.path={GATED_MODEL}"], {"HF_TOKEN": "hf_no_access"},
                                   ["is a gated repository (HTTP 403)", "HF_TOKEN"]),
    "gated_dataset": ([f"benchmark.path={GATED_DATASET}"], {},
                      ["is a gated repository (HTTP 401)", "hf auth login", "benchmark.path=/path", "hf download"]),
    "missing_benchmark_file": (["benchmark=mmmu", "benchmark.subjects=[Math]"], {},
                               ["no file matching ['Math/validation-*.parquet']", "benchmark.path to a local copy"]),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_unreachable_repository_ends_in_one_line_saying_what_to_do(hub, tmp_path, case):
    overrides, settings, phrases = ERRORS[case]
    done = _launch(["model=llava", "benchmark=mmbench_cn", *overrides, "logger=none", "benchmark.limit=2",
                    f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'keys'}"],
                   hub.env(HF_HOME=str(tmp_path / "hf"), **settings))
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = {line.split("] - ", 1)[-1] for line in output.splitlines() if all(phrase in line for phrase in phrases)}
    assert len(lines) == 1, output[-3000:]  # one message (the job's log line and the exit line may both show it)
