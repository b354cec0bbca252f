#!/usr/bin/env bash
# Install the Pulumi CLI this workspace is pinned to into .tools/bin.
#
# Order of preference:
#   1. `pulumi` already on PATH at a supported version: link it, done;
#   2. a cached build of the pinned version (~/.cache/statekeeper): copy it;
#   3. the official release archive, when it can be downloaded;
#   4. a build from source with Go, from the Go module proxy: the CLI
#      (github.com/pulumi/pulumi/pkg/v3) and the YAML language host
#      (github.com/pulumi/pulumi-yaml), cached for the next run.
#
# Known gap: the Python language host (pulumi-language-python) is not
# published on the Go module proxy, so a source build cannot run Python
# programs (stacks/) with `pulumi up`; they need a release download.  The
# end-to-end tests use a YAML project for that reason.
set -euo pipefail

PULUMI_VERSION="${PULUMI_VERSION:-3.260.0}"
PULUMI_YAML_VERSION="${PULUMI_YAML_VERSION:-1.25.0}"
MINIMUM="3.245.0"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.tools/bin"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/statekeeper/pulumi-v$PULUMI_VERSION"
mkdir -p "$bin"

say() { printf 'install-pulumi: %s\n' "$*" >&2; }

version_ok() { # version_ok VERSION -> true when VERSION >= MINIMUM
    [ "$(printf '%s\n%s\n' "$MINIMUM" "$1" | sort -V | head -n1)" = "$MINIMUM" ]
}

have_pinned() {
    [ -x "$bin/pulumi" ] && [ -x "$bin/pulumi-language-yaml" ] &&
        [ "$("$bin/pulumi" version 2>/dev/null)" = "v$PULUMI_VERSION" ]
}

if have_pinned; then
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

if [ -x "$cache/pulumi" ] && [ -x "$cache/pulumi-language-yaml" ]; then
    say "copying cached v$PULUMI_VERSION from $cache"
    cp -f "$cache"/pulumi* "$bin/"
    exit 0
fi

mkdir -p "$cache"
archive="https://get.pulumi.com/releases/sdk/pulumi-v$PULUMI_VERSION-linux-x64.tar.gz"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if curl -fsSL --connect-timeout 10 --max-time 300 -o "$tmp/p.tgz" \
    "$archive" 2>/dev/null; then
    say "downloaded the v$PULUMI_VERSION release"
    tar -xzf "$tmp/p.tgz" -C "$tmp"
    cp -f "$tmp"/pulumi/pulumi* "$cache/"
    cp -f "$cache"/pulumi* "$bin/"
    exit 0
fi

command -v go >/dev/null || {
    say "no release download and no Go toolchain: install Go, or put" \
        "pulumi >= $MINIMUM on PATH"
    exit 1
}
say "no release download; building v$PULUMI_VERSION with Go" \
    "(first build takes several minutes, later runs use $cache)"

# pkg/v3 carries `replace` directives, so `go install pkg@version` refuses;
# a throwaway module that requires it builds the command instead.
mod="$tmp/build"
mkdir -p "$mod"
cat >"$mod/go.mod" <<EOF
module statekeeper.local/pulumibuild

go 1.24

require (
	github.com/pulumi/pulumi/pkg/v3 v$PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 v$PULUMI_VERSION
)

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
EOF
cat >"$mod/tools.go" <<'EOF'
//go:build tools

package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
EOF
ldflags="-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION"
(
    cd "$mod"
    export GOFLAGS="-mod=mod -buildvcs=false"
    go mod tidy
    go build -trimpath -ldflags "$ldflags" -o "$cache/pulumi" \
        github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
)
GOFLAGS="-buildvcs=false" GOBIN="$cache" go install -trimpath \
    "github.com/pulumi/pulumi-yaml/cmd/pulumi-language-yaml@v$PULUMI_YAML_VERSION"

cp -f "$cache"/pulumi* "$bin/"
say "installed $("$bin/pulumi" version) into .tools/bin"
