#!/usr/bin/env bash
# Install the Pulumi CLI this workspace is pinned to into .tools/bin, with
# the language hosts for YAML and Python programs.
#
# Order of preference:
#   1. `pulumi` already on PATH at a supported version: link it, done;
#   2. a cached copy of the pinned version (~/.cache/statekeeper): copy it;
#   3. the official release archive, when it can be downloaded;
#   4. a build from source with Go, from the Go module proxy, each piece
#      cached for the next run:
#      - the CLI, github.com/pulumi/pulumi/pkg/v3 at the pinned version;
#      - the YAML host, github.com/pulumi/pulumi-yaml;
#      - the Python host, from github.com/pulumi/pulumi/sdk/v3 v3.79.0, the
#        last release that shipped it inside the sdk module (later releases
#        give it a module of its own, which the proxy does not serve).  It
#        speaks the same language-host protocol and runs Python programs
#        with the pinned CLI; `pulumi-language-python-exec` comes from the
#        pinned sdk.  Known gap: this older host ignores the `virtualenv`
#        option of Pulumi.yaml and runs the first `python3` on PATH, so the
#        tasks put .venv/bin on the CLI's PATH.
set -euo pipefail

PULUMI_VERSION="${PULUMI_VERSION:-3.260.0}"
PULUMI_YAML_VERSION="${PULUMI_YAML_VERSION:-1.25.0}"
PYTHON_HOST_SDK_VERSION="3.79.0"
MINIMUM="3.245.0"
PIECES="pulumi pulumi-language-yaml pulumi-language-python pulumi-language-python-exec"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.tools/bin"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/statekeeper/pulumi-v$PULUMI_VERSION"
mkdir -p "$bin" "$cache"

say() { printf 'install-pulumi: %s\n' "$*" >&2; }

version_ok() { # version_ok VERSION -> true when VERSION >= MINIMUM
    [ "$(printf '%s\n%s\n' "$MINIMUM" "$1" | sort -V | head -n1)" = "$MINIMUM" ]
}

complete_in() { # complete_in DIR -> true when DIR holds every piece
    for piece in $PIECES; do
        [ -x "$1/$piece" ] || return 1
    done
}

if complete_in "$bin" &&
    [ "$("$bin/pulumi" version 2>/dev/null)" = "v$PULUMI_VERSION" ]; then
    say "Pulumi CLI v$PULUMI_VERSION already in .tools/bin"
    exit 0
fi

if [ "${STATEKEEPER_IGNORE_PATH_PULUMI:-}" != "1" ]; then
    found="$(PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vx "$bin" |
        paste -sd:)" command -v pulumi || true)"
    if [ -n "$found" ]; then
        have="$("$found" version 2>/dev/null | sed 's/^v//')"
        if [ -n "$have" ] && version_ok "$have"; then
            say "using $found (v$have) from PATH"
            ln -sf "$found" "$bin/pulumi"
            for host in "$(dirname "$found")"/pulumi-language-*; do
                [ -e "$host" ] && ln -sf "$host" "$bin/"
            done
            exit 0
        fi
        say "ignoring $found: v$have is older than $MINIMUM"
    fi
fi

install_cached() {
    cp -f "$cache"/pulumi* "$bin/"
    say "installed $("$bin/pulumi" version) into .tools/bin"
    exit 0
}

if complete_in "$cache"; then
    say "copying cached v$PULUMI_VERSION from $cache"
    install_cached
fi

archive="https://get.pulumi.com/releases/sdk/pulumi-v$PULUMI_VERSION-linux-x64.tar.gz"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if curl -fsSL --connect-timeout 10 --max-time 300 -o "$tmp/p.tgz" \
    "$archive" 2>/dev/null; then
    say "downloaded the v$PULUMI_VERSION release"
    tar -xzf "$tmp/p.tgz" -C "$tmp"
    cp -f "$tmp"/pulumi/pulumi* "$cache/"
    install_cached
fi

command -v go >/dev/null || {
    say "no release download and no Go toolchain: install Go, or put" \
        "pulumi >= $MINIMUM on PATH"
    exit 1
}
say "no release download; building what $cache lacks with Go" \
    "(the first build takes several minutes)"
export GOFLAGS="-buildvcs=false"

# build_in MODULE_DIR OUTPUT PACKAGE [LDFLAGS]: modules with `replace`
# directives refuse `go install pkg@version`; a throwaway module that
# requires them builds the command instead.
build_in() {
    (
        cd "$1"
        export GOFLAGS="-mod=mod -buildvcs=false"
        go mod tidy
        go build -trimpath -ldflags "${4:-}" -o "$2" "$3"
    )
}

if [ ! -x "$cache/pulumi" ]; then
    mod="$tmp/cli"
    mkdir -p "$mod"
    cat >"$mod/go.mod" <<EOF
module statekeeper.local/pulumicli

go 1.24

require (
	github.com/pulumi/pulumi/pkg/v3 v$PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 v$PULUMI_VERSION
)

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
EOF
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' \
        github.com/pulumi/pulumi/pkg/v3/cmd/pulumi >"$mod/tools.go"
    build_in "$mod" "$cache/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi \
        "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION"
fi

if [ ! -x "$cache/pulumi-language-yaml" ]; then
    GOBIN="$cache" go install -trimpath \
        "github.com/pulumi/pulumi-yaml/cmd/pulumi-language-yaml@v$PULUMI_YAML_VERSION"
fi

if [ ! -x "$cache/pulumi-language-python" ]; then
    mod="$tmp/python"
    mkdir -p "$mod"
    printf 'module statekeeper.local/pythonhost\n\ngo 1.21\n\nrequire %s v%s\n' \
        github.com/pulumi/pulumi/sdk/v3 "$PYTHON_HOST_SDK_VERSION" >"$mod/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' \
        github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python \
        >"$mod/tools.go"
    build_in "$mod" "$cache/pulumi-language-python" \
        github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python
fi

if [ ! -x "$cache/pulumi-language-python-exec" ]; then
    sdk="$(go mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" \
        "$cache/pulumi-language-python-exec"
fi

install_cached
