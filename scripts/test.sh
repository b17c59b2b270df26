#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs what the tests need, builds, runs pytest.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v setfacl >/dev/null 2>&1 || need_apt+=(acl)
command -v setfattr >/dev/null 2>&1 || need_apt+=(attr)
command -v groff >/dev/null 2>&1 || need_apt+=(groff-base)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing: ${need_apt[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "missing Debian packages (run as root to install): ${need_apt[*]}" >&2
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"
# Tests run the checkout itself (python -m zcsync with the repo on PYTHONPATH): build the C kernel here.
python3 setup.py -q build_ext --inplace >/dev/null

exec python3 -m pytest -q "$@"
