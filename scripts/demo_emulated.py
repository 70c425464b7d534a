"""The demo until the Ganeti lab takes over: hookpack's hooks, run as Ganeti runs them.

Installs hookpack's entry scripts into a scratch hooks tree (as an operator would, with
`hookpack hooks install`), then replays every environment recorded on a real Ganeti
3.0.2 cluster (shared/reference/ganeti-env-samples) through the hooks-runner emulator,
as the node it was recorded on, and prints what each hook run did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hookpack.emulator import pre_aborts, run_hooks  # noqa: E402
from tests.conftest import SAMPLES, load_sample, sample_files  # noqa: E402

CONFIG = """\
[log]
syslog = false

[paths]
state_dir = "{work}/state"
run_dir = "{work}/run"
spool_dir = "{work}/spool"

[record]
enabled = true
path = "{work}/record.jsonl"

[policy]
enabled = true
name_pattern = '^inst[0-9]+\\.example\\.test$'
"""


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="hookpack-demo-"))
    config = work / "hookpack.toml"
    hooks = work / "hooks"
    print(f"== installing hookpack's hooks into {hooks}")
    subprocess.run([sys.executable, "-m", "hookpack", "hooks", "install", "--root", str(hooks),
                    "--entry-config", str(config)], check=True, stdout=subprocess.DEVNULL)
    rows = []
    for path in sample_files():
        environ, node = load_sample(path)
        config.write_text(CONFIG.format(work=work) + f'\n[node]\nfqdn = "{node}"\n')
        hpath, phase = environ["GANETI_HOOKS_PATH"], environ["GANETI_HOOKS_PHASE"]
        results = run_hooks(hooks, hpath, phase, environ)
        print(f"\n== {path.stem}: {hpath}/{phase} on {node}")
        for result in results:
            for line in result.output.splitlines():
                print(f"   {line}")
        rows.append((path.stem, node.split(".")[0], results))
    print("\n== a pre hook that vetoes: instance-add of a name the site rule rejects")
    environ, node = load_sample(SAMPLES / "instance-add-post-node1.env")
    environ = {k: v for k, v in environ.items() if not k.startswith("GANETI_POST_")}
    environ.update(GANETI_HOOKS_PHASE="pre", GANETI_INSTANCE_NAME="web01.example.test")
    config.write_text(CONFIG.format(work=work) + f'\n[node]\nfqdn = "{node}"\n')
    veto = run_hooks(hooks, "instance-add", "pre", environ)
    for result in veto:
        for line in result.output.splitlines():
            print(f"   {line}")
    print(f"   Ganeti would {'ABORT' if pre_aborts(veto) else 'continue'} the operation")

    records = [json.loads(line) for line in (work / "record.jsonl").read_text().splitlines()]
    print("\n== summary: where hookpack ran, in which roles (from the record action)")
    print(f"   {'sample':32} {'node':6} {'roles':28} result")
    for (stem, short, results), record in zip(rows, records, strict=False):
        status = ",".join(r.status for r in results)
        print(f"   {stem:32} {short:6} {','.join(record['roles']):28} {status}")
    print(f"\n   {len(records)} hook runs recorded; scratch tree: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
