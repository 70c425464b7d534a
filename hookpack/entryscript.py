"""The entry script Ganeti runs: a small /bin/sh program, fail-safe and cheap.

Why a shell script and not `#!<venv python>`: Ganeti aborts an operation when a pre hook
exits non-zero, so nothing below the entry may turn into a failure. A Python shebang
fails with a traceback when the interpreter is gone, or hookpack (or a dependency) does
not import, or the config cannot be read. This script
- decides from facts baked in by `hookpack hooks install` (valid only while the config
  file's mtime equals the entry's own: the installer sets it so) whether hookpack has
  anything to do here: no global scripts, no enabled action for this hook path and phase,
  or none for this node's part in the operation; then it exits 0 without starting Python;
- otherwise resolves the interpreter's directory once (`cd -P`: a run uses one installed
  version even if `current` is switched meanwhile) and runs a bootstrap in Python that
  reports back through a marker at the end of the output: the exit code, or why hookpack
  did not run;
- turns anything else (interpreter missing, no answer, a crash, a signal) into ONE line on
  stderr, in syslog (`logger`) and in log.file, and exits 0; in the pre phase 1 instead
  when `hook.pre_fail_closed` was true at install time. A veto passes through.
"""

from __future__ import annotations

import math

from hookpack.config import CORE_SCHEMA
from hookpack.record import record

# Python run by the entry (`python -I -S -c BOOTSTRAP mark kind config server limit entry`).
# With -S it starts in a third of the time; when a hook server answers on `server`
# (hookpack/hookserver.py) it only hands the run over, with no import beyond `_socket`;
# otherwise it sets up the site directories as a normal start would and runs hookpack
# itself. Kept free of hookpack imports until the try: a missing hookpack is reported,
# not raised. It must not contain a single quote (it is embedded in a single-quoted shell
# string).
BOOTSTRAP = """\
import os, sys
mark, kind, config, server, limit = sys.argv[1:6]
sys.argv = sys.argv[6:]
def finish(result):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(1, ("\\n" + mark + str(result)).encode("utf-8", "replace"))
    os._exit(0)
def leave(code, line=""):
    if line:
        os.write(2, ("hookpack: " + line + "\\n").encode("utf-8", "replace"))
    os._exit(code)
def hand_over():
    import _socket
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        conn.settimeout(2.0)
        conn.connect(server)
        mask = os.umask(0)
        os.umask(mask)
        fields = [b"hookpack-hook-1", os.fsencode(sys.executable), kind.encode(),
                  os.fsencode(config), limit.encode(), b"%o" % mask, os.getcwdb(),
                  b"%d" % len(sys.argv)] + [os.fsencode(a) for a in sys.argv]
        fields += [k + b"=" + v for k, v in os.environb.items()]
        conn.send(b"\\0".join(fields))
        if conn.recv(64) != b"ok":
            return
        fds = (1).to_bytes(4, sys.byteorder) + (2).to_bytes(4, sys.byteorder)
        conn.sendmsg([b"go"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    except OSError:
        return
    try:
        conn.settimeout(float(limit) + 5)
        answer = conn.recv(65536)
    except OSError as err:
        answer = str(err).encode()
    if answer.startswith(b"result "):
        finish(answer[7:].decode("utf-8", "replace"))
    if answer.startswith(b"exit ") and answer[5:].isdigit():
        leave(int(answer[5:]))
    leave(70, "the hook server ended the run without an answer: " + repr(answer[:200]))
if server:
    hand_over()
if sys.flags.no_site:
    import site
    site.main()
try:
    if kind == "global":
        from hookpack.globalhooks import entry
    else:
        from hookpack.hook import entry
    result = entry(config or None)
except BaseException as err:
    what = "import hookpack" if isinstance(err, ImportError) else "run hookpack"
    text = " ".join(str(err).split())
    finish("notrun cannot " + what + ": " + type(err).__name__ + (": " + text if text else ""))
finish(result)
"""

SERVER_SOCKET = "hookserver.sock"  # in paths.run_dir
DEFAULT_SERVER = f"{CORE_SCHEMA['paths']['run_dir'].default}/{SERVER_SOCKET}"
# The schema's largest hook.deadline (hookpack/config.py).
MAX_DEADLINE = 600.0

SCRIPT = r"""#!/bin/sh
# hookpack-entry: installed by `hookpack hooks install`; do not edit, reinstall.
# Ganeti runs it for {directory}. A shell script so that nothing below it can fail an
# operation: see hookpack/entryscript.py. Facts below were read from the config at
# install time; they are used only while its mtime equals this file's.
hp_kind={kind}
hp_python={python}
hp_config={config}
hp_config_arg={config_arg}
hp_facts={facts}
hp_fail_closed={fail_closed}
hp_syslog={syslog}
hp_facility={facility}
hp_logfile={logfile}
hp_global={global_enabled}
hp_run={run}
hp_roles={roles}
hp_node={node}
hp_limit={limit}
hp_server={server}
hp_boot='{bootstrap}'
hp_nl='
'
hp_hpath=${{GANETI_HOOKS_PATH:-unknown}}
case ${{GANETI_HOOKS_PHASE:-}} in
[Pp][Rr][Ee]) hp_phase=pre ;;
[Pp][Oo][Ss][Tt]) hp_phase=post ;;
*) hp_phase=${{GANETI_HOOKS_PHASE:-unknown}} ;;
esac
if [ "$hp_kind" = global ]; then hp_what="global hooks"; else hp_what=actions; fi

hp_say() {{
    printf '%s\n' "$1" >&2
    if [ "$hp_syslog" = 1 ]; then
        logger -t hookpack -p "$hp_facility.err" -- "$1" >/dev/null 2>&1
    fi
    if [ -n "$hp_logfile" ]; then
        printf '%s %s\n' "$(date +%Y-%m-%dT%H:%M:%S%z)" "$1" >>"$hp_logfile" 2>/dev/null
    fi
}}

hp_not_run() {{
    hp_line="hookpack: $hp_what did not run for $hp_hpath/$hp_phase: $1"
    if [ "$hp_phase" != pre ]; then
        hp_say "$hp_line"
        exit 0
    fi
    if [ "$hp_fail_closed" = 1 ]; then
        hp_say "$hp_line; vetoing the operation (hook.pre_fail_closed = true)"
        exit 1
    fi
    hp_say "$hp_line; the operation goes on (hook.pre_fail_closed = false)"
    exit 0
}}

hp_facts_hold() {{
    case $hp_facts in
    present) [ -e "$hp_config" ] && [ ! "$hp_config" -nt "$0" ] && [ ! "$0" -nt "$hp_config" ] ;;
    absent) [ ! -e "$hp_config" ] ;;
    *) return 1 ;;
    esac
}}

hp_mine() {{
    # Ganeti's names are lower case; one with upper case letters is left to hookpack.
    hp_name=${{1%.}}
    [ "$hp_name" = "$hp_node" ] && return 0
    case $hp_name in *[A-Z]*) return 0 ;; esac
    return 1
}}

hp_mentioned() {{
    # Is this node named where hookpack's roles come from (hookpack/roles.py)?
    case " $hp_roles " in
    *" master "*) hp_mine "${{GANETI_MASTER:-}}" && return 0 ;;
    esac
    case " $hp_roles " in
    *" instance "*)
        set -f
        for hp_n in ${{GANETI_INSTANCE_PRIMARY:-}} ${{GANETI_INSTANCE_SECONDARIES:-}} \
                ${{GANETI_OLD_PRIMARY:-}} ${{GANETI_NEW_PRIMARY:-}} ${{GANETI_TARGET_NODE:-}}; do
            if hp_mine "$hp_n"; then set +f; return 0; fi
        done
        set +f ;;
    esac
    return 1
}}

hp_nothing_to_do() {{
    # True only when certain; any doubt runs hookpack, which decides properly.
    if [ "$hp_kind" = global ]; then
        for hp_f in "${{0%/*}}/../global-$hp_phase.d"/*; do
            [ -e "$hp_f" ] && {{ hp_facts_hold && [ "$hp_global" = 0 ]; return; }}
        done
        return 0
    fi
    hp_facts_hold || return 1
    [ -z "$hp_run" ] && return 0
    case " $hp_roles " in *" any "*) return 1 ;; esac
    [ -n "$hp_node" ] || return 1
    ! hp_mentioned
}}

hp_nothing_to_do && exit 0
if cd -P "${{hp_python%/*}}" 2>/dev/null; then
    hp_py=$PWD/${{hp_python##*/}}
    cd / || exit 0
fi
if [ -z "${{hp_py:-}}" ] || [ ! -x "$hp_py" ]; then
    hp_not_run "interpreter $hp_python is missing or not executable; reinstall hookpack \
(hookpack doctor)"
fi
hp_mark="@hookpack-result-$$:"
# The subshell waits for Python itself (the `exit` after it), so a shell note such as
# "Segmentation fault" lands in the captured output too, not on the entry's stderr.
# Bounded even when Python hangs before hookpack's own deadline runs (a hung import):
# hook.deadline + 10 s while the facts hold, else the schema's largest deadline + 10 s.
hp_facts_hold || hp_limit={max_limit}
# A warm hook server (hookpack/hookserver.py) runs it when its socket is there.
[ -S "$hp_server" ] || hp_server=
hp_out=$(exec 2>&1; timeout -k 2 "$hp_limit" "$hp_py" -I -S -c "$hp_boot" "$hp_mark" "$hp_kind" \
    "$hp_config_arg" "$hp_server" "$hp_limit" "$0"; exit $?)
hp_rc=$?
case $hp_out in
*"$hp_mark"*)
    hp_result=${{hp_out##*"$hp_mark"}}
    hp_text=${{hp_out%"$hp_nl$hp_mark"*}}
    [ "$hp_text" = "$hp_out" ] && hp_text=${{hp_out%"$hp_mark"*}}
    hp_text=${{hp_text%"$hp_nl"}}  # the marker starts on a line of its own
    [ -n "$hp_text" ] && printf '%s\n' "$hp_text" >&2
    case $hp_result in
    "notrun "*) hp_not_run "${{hp_result#notrun }}" ;;
    ''|*[!0-9]*) hp_not_run "unexpected answer from hookpack: $hp_result" ;;
    esac
    exit "$hp_result" ;;
esac
case $hp_rc in 124|137) hp_not_run "hookpack did not answer within $hp_limit s (killed)" ;; esac
hp_last=${{hp_out##*"$hp_nl"}}
hp_not_run "$hp_py exited with status $hp_rc before hookpack answered${{hp_last:+: $hp_last}}"
"""


@record(frozen=True)
class EntryFacts:
    """What an entry knows without starting Python, read from the config at install."""

    config: str  # the file the hook run reads
    config_arg: str  # passed to hookpack ('' : its default lookup)
    state: str  # "present" (valid while mtimes match), "absent", "unknown" (never trusted)
    mtime_ns: int | None = None
    fail_closed: bool = False
    syslog: bool = True
    facility: str = "daemon"
    logfile: str = ""
    global_enabled: bool = True
    enabled: frozenset[str] = frozenset()  # action names enabled
    node: str = ""  # this node's name, lower case, when Ganeti's node list confirms it
    deadline: float = MAX_DEADLINE  # hook.deadline
    server: str = DEFAULT_SERVER  # the hook server's socket (paths.run_dir)


def shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def render(directory: str, kind: str, python: str, facts: EntryFacts,
           run: list[str], roles: list[str]) -> str:
    """The entry for ``directory`` (`<hpath>-<phase>.d`); ``run``: the enabled actions
    registered there; ``roles``: "any", "master", "instance" (whose roles they need)."""
    return SCRIPT.format(
        directory=directory, kind=kind, python=shell_quote(python),
        config=shell_quote(facts.config), config_arg=shell_quote(facts.config_arg),
        facts=facts.state, fail_closed=int(facts.fail_closed), syslog=int(facts.syslog),
        facility=shell_quote(facts.facility), logfile=shell_quote(facts.logfile),
        global_enabled=int(facts.global_enabled), run=shell_quote(" ".join(run)),
        roles=shell_quote(" ".join(roles)), node=shell_quote(facts.node),
        limit=math.ceil(facts.deadline) + 10, server=shell_quote(facts.server),
        max_limit=math.ceil(MAX_DEADLINE) + 10,
        bootstrap=BOOTSTRAP)
