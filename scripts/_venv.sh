# Shared by demo.sh and test.sh: make_venv DIR PIP-ARGS... creates DIR (a virtual environment)
# if missing and installs PIP-ARGS into it, quietly, skipping the install when nothing changed.
make_venv() {
  local dir=$1; shift
  local python=${PYTHON:-python3}
  [[ -x $dir/bin/python ]] || "$python" -m venv "$dir"
  local stamp="$dir/.kmem-installed"
  local want
  want="$(printf '%s\n' "$@"; cat pyproject.toml)"
  if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
    "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
    printf '%s' "$want" > "$stamp"
  fi
}
