#!/bin/sh
# Install the restic-manager agent on a Linux host with systemd.
#
#   curl -fsSL https://SERVER/install/install.sh | sudo sh -s -- --server https://SERVER --token rme_...
#
# Options:
#   --server URL     the restic-manager server (pre-filled when the server serves this file)
#   --token TOKEN    one-time enrollment token from the Add host page (valid for one hour).
#                    Without it an already enrolled host is upgraded in place.
#   --ca-file FILE   PEM bundle of the CA that signed the server's certificate
#   --pin SHA256     SHA-256 of the server's certificate (DER); checked here and by the agent
#   --python PATH    the Python 3 that runs the agent (default: /usr/bin/python3, else python3)
#   --reenroll       enroll again although this host is enrolled (it becomes a new host)
#   --no-start       install, enroll and write the unit, but do not start the agent
#   --dry-run        show what would be done; download and verify the agent, change nothing
#
# What it does: checks python3 >= MINIMUM_PYTHON, installs restic and python3-cryptography
# with the package manager when missing, downloads the agent (one .pyz file) and checks its
# sha256, installs it with a wrapper in /usr/local/bin, enrolls, writes and starts a
# sandboxed systemd unit, and finally lists restic jobs already scheduled on this host (cron,
# systemd timers) with the command that would disable each. It disables none of them.
set -eu

# Filled in by the server when it serves this script (see app/distribution/routes.py).
DEFAULT_SERVER=''
MINIMUM_PYTHON='3.9'

PYZ_NAME=restic-manager-agent.pyz
LIB_DIR=/usr/local/lib/restic-manager-agent
WRAPPER=/usr/local/bin/restic-manager-agent
AGENT_HOME=/var/lib/restic-manager-agent
RESTIC_CACHE=/var/cache/restic
UNIT_NAME=restic-manager-agent
UNIT_PATH=/etc/systemd/system/restic-manager-agent.service
# Comments out the active cron lines that mention restic, reversibly (see report_cron_file).
CRON_DISABLE_SED='/^[[:space:]]*#/!{/restic/s/^/#restic-manager# /;}'
# For tests: look for cron files under this directory instead of /.
SCAN_ROOT=${RM_INSTALL_SCAN_ROOT:-}

SERVER=''
TOKEN=''
CA_FILE=''
PIN=''
DRY_RUN=0
NO_START=0
REENROLL=0
PYTHON=''
PACKAGE_MANAGER=''
TRUST_FILE=''
WORK_DIR=''
FOUND_SCHEDULES=0

say() { printf '%s\n' "$*"; }
step() { printf '\n==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<'EOF'
usage: curl -fsSL https://SERVER/install/install.sh | sudo sh -s -- [--server URL] --token TOKEN
           [--ca-file FILE] [--pin SHA256] [--python PATH] [--reenroll] [--no-start] [--dry-run]

  --server URL     the restic-manager server (pre-filled when the server serves this script)
  --token TOKEN    one-time enrollment token from the Add host page (valid for one hour);
                   without it an already enrolled host is upgraded in place
  --ca-file FILE   PEM bundle of the CA that signed the server's certificate
  --pin SHA256     SHA-256 of the server's certificate (DER); checked here and by the agent
  --python PATH    the Python 3 to run the agent with (default: /usr/bin/python3 if new
                   enough, else python3 on PATH)
  --reenroll       enroll again although this host is enrolled (it becomes a new host)
  --no-start       install, enroll and write the systemd unit, but do not start the agent
  --dry-run        show what would be done (the agent is downloaded and verified); change nothing
EOF
}

# Run a command, or with --dry-run only show it.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        say "    would run: $*"
    else
        "$@"
    fi
}

# write_file PATH MODE < content: atomically, or with --dry-run show the content.
write_file() {
    if [ "$DRY_RUN" = 1 ]; then
        say "    would write $1 (mode $2):"
        sed 's/^/      | /'
        return 0
    fi
    cat >"$1.new.$$"
    chmod "$2" "$1.new.$$"
    mv -f "$1.new.$$" "$1"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
        --server | --token | --ca-file | --pin | --python)
            [ $# -ge 2 ] || die "$1 needs a value"
            case $1 in
            --server) SERVER=$2 ;;
            --token) TOKEN=$2 ;;
            --ca-file) CA_FILE=$2 ;;
            --pin) PIN=$2 ;;
            *) PYTHON=$2 ;;
            esac
            shift 2
            ;;
        --server=*) SERVER=${1#*=} && shift ;;
        --token=*) TOKEN=${1#*=} && shift ;;
        --ca-file=*) CA_FILE=${1#*=} && shift ;;
        --pin=*) PIN=${1#*=} && shift ;;
        --python=*) PYTHON=${1#*=} && shift ;;
        --dry-run) DRY_RUN=1 && shift ;;
        --no-start) NO_START=1 && shift ;;
        --reenroll) REENROLL=1 && shift ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option: $1 (see --help)" ;;
        esac
    done
}

check_options() {
    SERVER=$(printf '%s' "${SERVER:-$DEFAULT_SERVER}" | sed 's:/*$::')
    case $SERVER in
    https://?*) ;;
    http://?*) warn "$SERVER is plain HTTP: the enrollment token and the agent's traffic travel unencrypted" ;;
    '') die "--server is required (the restic-manager server's URL, e.g. https://backup.example.com); the server did not fill it in because it does not know its public address: set RM_BASE_URL (or RM_ALLOWED_HOSTS) on the server" ;;
    SERVER_URL) die "replace SERVER_URL in the install command with the restic-manager server's URL (e.g. https://backup.example.com), or set RM_BASE_URL on the server and create a new command" ;;
    *) die "--server must be an http:// or https:// URL, not '$SERVER'" ;;
    esac
    if [ -z "$TOKEN" ] && [ ! -f "$AGENT_HOME/state.json" ]; then
        die "--token is required: mint an enrollment token on the server's Add host page"
    fi
    if [ -n "$TOKEN" ] && [ -f "$AGENT_HOME/state.json" ] && [ "$REENROLL" = 0 ]; then
        die "this host is already enrolled ($AGENT_HOME/state.json). To upgrade the agent, run this without --token; to enroll it again as a new host, add --reenroll"
    fi
    case $TOKEN in
    '' | rme_*) ;;
    *) warn "the token does not look like an enrollment token (rme_...)" ;;
    esac
    if [ -n "$CA_FILE" ] && [ ! -r "$CA_FILE" ]; then
        die "--ca-file $CA_FILE is not a readable file"
    fi
    TRUST_FILE=$CA_FILE
    if [ -n "$PIN" ]; then
        PIN=$(printf '%s' "$PIN" | tr 'A-F' 'a-f' | tr -d ':')
        PIN=${PIN#sha256/}
        PIN=${PIN#sha256:}
        case $PIN in
        *[!0-9a-f]*) die "--pin must be the SHA-256 of the server's certificate: 64 hex digits" ;;
        esac
        [ ${#PIN} -eq 64 ] || die "--pin must be the SHA-256 of the server's certificate: 64 hex digits"
    fi
}

check_root() {
    if [ "$(id -u)" != 0 ]; then
        [ "$DRY_RUN" = 1 ] || die "run this as root (curl ... | sudo sh -s -- ...)"
        warn "not running as root: fine for --dry-run only"
    fi
}

check_systemd() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        return 0
    fi
    [ "$DRY_RUN" = 1 ] || die "systemd is not running on this host. Install the agent by hand instead: see 'Manual install' in docs/agent.md"
    warn "systemd is not running on this host: a real install would stop here"
}

python_is_new_enough() {
    "$1" -c "import sys; sys.exit(sys.version_info[:2] < (${MINIMUM_PYTHON%%.*}, ${MINIMUM_PYTHON#*.}))" 2>/dev/null
}

# The system's /usr/bin/python3 first: that is the Python python3-cryptography installs into
# (sudo's PATH may find a self-built /usr/local/bin/python3 before it). --python overrides.
check_python() {
    step "Checking Python"
    if [ -z "$PYTHON" ]; then
        for candidate in /usr/bin/python3 "$(command -v python3 || true)"; do
            if [ -x "$candidate" ] && python_is_new_enough "$candidate"; then
                PYTHON=$candidate
                break
            fi
        done
    fi
    if [ -z "$PYTHON" ]; then
        found=$(command -v python3 || true)
        [ -n "$found" ] || die "python3 is not installed. Install Python $MINIMUM_PYTHON or newer (e.g. apt-get install python3) and run this again"
        PYTHON=$found
    fi
    case $PYTHON in
    */*) ;;
    *) PYTHON=$(command -v "$PYTHON" || echo "$PYTHON") ;;
    esac
    [ -x "$PYTHON" ] || die "$PYTHON is not an executable Python"
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown)
    python_is_new_enough "$PYTHON" || die "$PYTHON is Python $version; the agent needs Python $MINIMUM_PYTHON or newer. Install a newer python3 (or pass --python PATH) and run this again"
    say "$PYTHON is Python $version"
}

detect_package_manager() {
    for candidate in apt-get dnf yum zypper apk; do
        if command -v "$candidate" >/dev/null 2>&1; then
            PACKAGE_MANAGER=$candidate
            return 0
        fi
    done
}

cryptography_package() {
    if [ "$PACKAGE_MANAGER" = apk ]; then echo py3-cryptography; else echo python3-cryptography; fi
}

install_packages() {
    step "Checking restic and python3-cryptography"
    detect_package_manager
    missing=''
    if command -v restic >/dev/null 2>&1; then
        say "restic: $(restic version 2>/dev/null || echo present)"
    else
        missing=restic
    fi
    if "$PYTHON" -c 'import cryptography' >/dev/null 2>&1; then
        say "python3-cryptography: present"
    else
        missing="$missing $(cryptography_package)"
    fi
    [ -n "$missing" ] || return 0
    [ -n "$PACKAGE_MANAGER" ] || die "missing:$missing, and no known package manager (apt-get, dnf, yum, zypper, apk). Install them and run this again"
    say "installing$missing with $PACKAGE_MANAGER"
    # $missing is a list of package names: split it on purpose.
    # shellcheck disable=SC2086
    case $PACKAGE_MANAGER in
    apt-get)
        run env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing </dev/null
        ;;
    dnf | yum) run "$PACKAGE_MANAGER" install -y $missing </dev/null ;;
    zypper) run zypper --non-interactive install $missing </dev/null ;;
    apk) run apk add --no-cache $missing </dev/null ;;
    esac || die "$PACKAGE_MANAGER could not install$missing (on RHEL-like hosts restic is in EPEL: dnf install epel-release)"
    [ "$DRY_RUN" = 1 ] && return 0
    command -v restic >/dev/null 2>&1 || die "restic is still not installed: install it from your distribution or https://github.com/restic/restic/releases"
    "$PYTHON" -c 'import cryptography' >/dev/null 2>&1 || die "$PYTHON still cannot import cryptography: the package serves the distribution's Python (/usr/bin/python3). Pass --python /usr/bin/python3, or install cryptography for $PYTHON"
}

# fetch URL FILE, with curl or wget, trusting TRUST_FILE when one is set.
fetch() {
    if command -v curl >/dev/null 2>&1; then
        if [ -n "$TRUST_FILE" ]; then
            curl -fsSL --retry 3 --cacert "$TRUST_FILE" -o "$2" "$1"
        else
            curl -fsSL --retry 3 -o "$2" "$1"
        fi
    elif command -v wget >/dev/null 2>&1; then
        if [ -n "$TRUST_FILE" ]; then
            wget -q --ca-certificate="$TRUST_FILE" -O "$2" "$1"
        else
            wget -q -O "$2" "$1"
        fi
    else
        die "neither curl nor wget is installed"
    fi
}

# With --pin: the server's certificate must be the pinned one. Without --ca-file the pinned
# certificate is then the only one the downloads trust (a self-signed server works).
check_pin() {
    [ -n "$PIN" ] || return 0
    step "Checking the server's certificate against --pin"
    case $SERVER in
    https://*) ;;
    *) die "--pin needs an https:// server" ;;
    esac
    command -v openssl >/dev/null 2>&1 || die "--pin needs openssl to read the server's certificate"
    address=${SERVER#https://}
    address=${address%%/*}
    case $address in
    *\]:* | [!\[]*:*) ;;
    *) address="$address:443" ;;
    esac
    host=${address%:*}
    if ! openssl s_client -connect "$address" -servername "$host" </dev/null 2>/dev/null |
        openssl x509 -outform PEM >"$WORK_DIR/server.pem" 2>/dev/null; then
        [ -n "$CA_FILE" ] || die "could not read the certificate of $address to check --pin (through a proxy? pass --ca-file as well)"
        warn "could not read the certificate of $address; the agent checks --pin when it connects"
        return 0
    fi
    actual=$(openssl x509 -in "$WORK_DIR/server.pem" -outform DER | sha256sum | cut -d ' ' -f 1)
    [ "$actual" = "$PIN" ] || die "the server's certificate has SHA-256 $actual, not the pinned $PIN: refusing to continue"
    say "the certificate matches the pin"
    [ -n "$CA_FILE" ] || TRUST_FILE=$WORK_DIR/server.pem
}

download_agent() {
    step "Downloading the agent from $SERVER"
    fetch "$SERVER/agent/$PYZ_NAME" "$WORK_DIR/$PYZ_NAME" || die "could not download $SERVER/agent/$PYZ_NAME"
    fetch "$SERVER/agent/$PYZ_NAME.sha256" "$WORK_DIR/$PYZ_NAME.sha256" || die "could not download $SERVER/agent/$PYZ_NAME.sha256"
    if command -v sha256sum >/dev/null 2>&1; then
        (cd "$WORK_DIR" && sha256sum -c "$PYZ_NAME.sha256" >/dev/null) || die "the download does not match its sha256 (damaged in transit?): run this again"
    else
        (cd "$WORK_DIR" && shasum -a 256 -c "$PYZ_NAME.sha256" >/dev/null) || die "the download does not match its sha256 (damaged in transit?): run this again"
    fi
    say "sha256 $(cut -d ' ' -f 1 "$WORK_DIR/$PYZ_NAME.sha256"): verified"
    if version=$("$PYTHON" "$WORK_DIR/$PYZ_NAME" --version 2>&1); then
        say "$version runs with $PYTHON"
    elif [ "$DRY_RUN" = 1 ]; then
        warn "the downloaded agent does not run yet (packages still missing?): $version"
    else
        die "the downloaded agent does not run with $PYTHON: $version"
    fi
}

install_agent() {
    step "Installing the agent: $LIB_DIR/$PYZ_NAME and $WRAPPER"
    run install -d -m 0755 "$LIB_DIR"
    run install -m 0644 "$WORK_DIR/$PYZ_NAME" "$LIB_DIR/$PYZ_NAME.new"
    run mv -f "$LIB_DIR/$PYZ_NAME.new" "$LIB_DIR/$PYZ_NAME"
    write_file "$WRAPPER" 0755 <<EOF
#!/bin/sh
# restic-manager agent (written by install.sh): the agent itself is $LIB_DIR/$PYZ_NAME
exec '$PYTHON' '$LIB_DIR/$PYZ_NAME' "\$@"
EOF
    step "Preparing the agent's home $AGENT_HOME (mode 0700) and restic's cache $RESTIC_CACHE"
    run install -d -m 0700 "$AGENT_HOME" "$RESTIC_CACHE"
    run chmod 0700 "$AGENT_HOME"
    if [ -n "$CA_FILE" ]; then
        run install -m 0644 "$CA_FILE" "$AGENT_HOME/ca.pem"
    fi
}

enroll() {
    if [ -z "$TOKEN" ]; then
        step "No --token: keeping this host's enrollment in $AGENT_HOME (upgrade)"
        return 0
    fi
    step "Enrolling with $SERVER"
    set -- "$WRAPPER" --home "$AGENT_HOME" enroll --server "$SERVER"
    if [ -n "$CA_FILE" ]; then
        set -- "$@" --ca-file "$AGENT_HOME/ca.pem"
    fi
    if [ -n "$PIN" ]; then
        set -- "$@" --pin "$PIN"
    fi
    if [ "$REENROLL" = 1 ]; then
        set -- "$@" --force
    fi
    # The token goes in on standard input: on the command line other users could read it.
    set -- "$@" --token -
    if [ "$DRY_RUN" = 1 ]; then
        say "    would run: $* (the token on standard input)"
        return 0
    fi
    printf '%s\n' "$TOKEN" | "$@" || die "enrollment failed (see above). A token works once and for one hour: mint a new one on the Add host page, then run this again"
}

write_unit() {
    step "Writing the systemd unit $UNIT_PATH"
    write_file "$UNIT_PATH" 0644 <<'UNIT'
# systemd unit for the restic-manager AGENT, written by install/install.sh (which embeds a
# copy of this file: keep the two identical; tests/e2e/test_install_script.py checks it).
#
# It runs as root because restic must read every file it backs up. The sandbox takes the
# rest away: the whole file system is read-only to the agent, restic and hooks except the
# agent's home and restic's cache. Restoring to another directory (or in place), or a hook
# that writes elsewhere, needs that path made writable with a drop-in:
#   systemctl edit restic-manager-agent     # then add:
#   [Service]
#   ReadWritePaths=/srv/restore
# HOME is the agent's home, not /root: restores go to $HOME/rm-restore/<job-id> unless the
# operator names a target, and /root is read-only here (ProtectHome=read-only).
[Unit]
Description=restic-manager agent
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=root
Environment=RM_AGENT_HOME=/var/lib/restic-manager-agent
Environment=HOME=/var/lib/restic-manager-agent
Environment=RESTIC_CACHE_DIR=/var/cache/restic
ExecStart=/usr/local/bin/restic-manager-agent run
Restart=always
RestartSec=5
# 4: the server deleted this host (410 host_deleted); restarting would only be refused again.
RestartPreventExitStatus=4
# SIGTERM reaches the agent only, so it can stop restic cleanly and keep its spool; anything
# still running after the timeout is killed.
KillMode=mixed
TimeoutStopSec=90
StateDirectory=restic-manager-agent
StateDirectoryMode=0700
CacheDirectory=restic
CacheDirectoryMode=0700
UMask=0077

NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths=/var/lib/restic-manager-agent /var/cache/restic
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
UNIT
    run systemctl daemon-reload
}

start_agent() {
    if [ "$NO_START" = 1 ]; then
        step "Not starting the agent (--no-start). Start it with: systemctl enable --now $UNIT_NAME (after an upgrade: systemctl restart $UNIT_NAME)"
        return 0
    fi
    step "Starting the agent"
    run systemctl enable "$UNIT_NAME"
    # restart, not start: an upgrade must replace the running agent
    run systemctl restart "$UNIT_NAME"
    [ "$DRY_RUN" = 1 ] && return 0
    sleep 2
    if systemctl is-active --quiet "$UNIT_NAME"; then
        say "$UNIT_NAME is running"
    else
        warn "$UNIT_NAME is not running; see: journalctl -u $UNIT_NAME -n 50"
    fi
}

# Active lines mentioning restic, numbered, with anything like a password masked.
restic_lines() {
    grep -n '^[[:space:]]*[^#[:space:]].*restic' "$@" 2>/dev/null |
        sed -e 's/\(PASSWORD[A-Za-z_]*=\)[^[:space:]]*/\1****/g' -e 's/^/      /'
}

report() { # report WHAT LINES DISABLE-COMMAND
    FOUND_SCHEDULES=1
    say "  $1"
    [ -z "$2" ] || say "$2"
    say "    disable with: $3"
}

report_cron_file() {
    report "$1" "$(restic_lines "$1")" "sed -i '$CRON_DISABLE_SED' $1"
}

report_user_crontab() { # report_user_crontab USER LINES
    report "crontab of $1" "$2" "crontab -u $1 -l | sed '$CRON_DISABLE_SED' | crontab -u $1 -"
}

report_existing_schedules() {
    step "Looking for restic backups already scheduled on this host (nothing is disabled)"
    root_reported=0
    for file in "$SCAN_ROOT"/etc/crontab "$SCAN_ROOT"/etc/cron.d/*; do
        if [ -f "$file" ] && [ -n "$(restic_lines "$file")" ]; then
            report_cron_file "$file"
        fi
    done
    for file in "$SCAN_ROOT"/etc/cron.hourly/* "$SCAN_ROOT"/etc/cron.daily/* \
        "$SCAN_ROOT"/etc/cron.weekly/* "$SCAN_ROOT"/etc/cron.monthly/*; do
        if [ -f "$file" ] && [ -x "$file" ] && grep -q restic "$file" 2>/dev/null; then
            report "$file (run by run-parts)" "$(restic_lines "$file")" "chmod -x $file"
        fi
    done
    for file in "$SCAN_ROOT"/var/spool/cron/crontabs/* "$SCAN_ROOT"/var/spool/cron/* \
        "$SCAN_ROOT"/etc/crontabs/*; do
        [ -f "$file" ] || continue
        lines=$(restic_lines "$file")
        [ -n "$lines" ] || continue
        user=${file##*/}
        if [ "$user" = root ]; then
            root_reported=1
        fi
        report_user_crontab "$user" "$lines"
    done
    if [ -z "$SCAN_ROOT" ] && [ "$root_reported" = 0 ] && command -v crontab >/dev/null 2>&1; then
        lines=$(crontab -l 2>/dev/null | grep -n '^[[:space:]]*[^#[:space:]].*restic' |
            sed -e 's/\(PASSWORD[A-Za-z_]*=\)[^[:space:]]*/\1****/g' -e 's/^/      /' || true)
        [ -z "$lines" ] || report_user_crontab root "$lines"
    fi
    report_restic_timers
    if [ "$FOUND_SCHEDULES" = 1 ]; then
        say ""
        say "  These run restic outside restic-manager and were left as they are. Once the"
        say "  server's schedules cover the same backups, disable them with the commands above"
        say "  (two schedulers on one repository contend for its lock)."
    else
        say "  none found"
    fi
}

report_restic_timers() {
    [ -z "$SCAN_ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 ||
        return 0
    systemctl list-timers --all --no-legend 2>/dev/null |
        awk 'NF >= 2 { print $(NF - 1), $NF }' >"$WORK_DIR/timers" || return 0
    while read -r timer service; do
        case $service in
        "$UNIT_NAME.service") continue ;;
        *.service) ;;
        *) continue ;;
        esac
        exec_start=$(systemctl show -p ExecStart "$service" 2>/dev/null || true)
        program=$(printf '%s\n' "$exec_start" | sed -n 's/.*path=\([^ ;]*\).*/\1/p' | head -n 1)
        if printf '%s' "$exec_start" | grep -q restic ||
            { [ -f "$program" ] && grep -Iq restic "$program" 2>/dev/null; }; then
            report "systemd timer $timer (runs $service: ${program:-?})" "" \
                "systemctl disable --now $timer"
        fi
    done <"$WORK_DIR/timers"
}

summary() {
    if [ "$DRY_RUN" = 1 ]; then
        step "Dry run: nothing was changed"
        return 0
    fi
    step "Done"
    say "  status:  $WRAPPER --home $AGENT_HOME status"
    say "  logs:    journalctl -u $UNIT_NAME -f"
    say "  The host turns online on the server's dashboard within seconds of the agent starting."
}

main() {
    parse_args "$@"
    check_options
    mode=''
    [ "$DRY_RUN" = 1 ] && mode=' (dry run: nothing is changed)'
    say "restic-manager agent installer for $SERVER on $(uname -s) $(uname -m)$mode"
    check_root
    check_systemd
    check_python
    WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/restic-manager-agent.XXXXXX")
    trap 'rm -rf "$WORK_DIR"' EXIT
    trap 'exit 130' INT TERM
    install_packages
    check_pin
    download_agent
    install_agent
    enroll
    write_unit
    start_agent
    report_existing_schedules
    summary
}

# Everything runs from here, so a download cut short cannot run half a script.
main "$@"
