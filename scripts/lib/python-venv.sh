# Sourced by the check scripts that run Python tools (openapi-check.sh,
# monitoring-check.sh). The sourcing script defines `log` and `die`.

# install_venv VENV PACKAGE...: makes VENV hold exactly these pinned
# packages from PyPI, unless its stamp says it already does.
install_venv() {
  local venv="$1"
  shift
  local stamp="$venv/.installed"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$*" ]]; then
    log "found $* in $venv"
    return
  fi
  command -v python3 >/dev/null || die "python3 not found"
  log "installing $* (PyPI) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" >&2 \
    || die "pip install $* failed"
  echo "$*" >"$stamp"
}
