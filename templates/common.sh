# Shared by templates/build.sh and templates/run.sh (sourced, not run): command-line handling,
# the names both scripts derive from the same environment variables, and the dry run.
# shellcheck shell=bash

TEMPLATES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$TEMPLATES_DIR")"
METADATA_FILE="templates/metadata.json"
case "${DRY_RUN:-0}" in
  1|true|yes) DRY_RUN=1 ;;
  *) DRY_RUN=0 ;;
esac

# --dry-run (or DRY_RUN=1) prints the commands instead of running them; --help prints usage().
parse_args() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      -h|--help) usage; exit 0 ;;
      *) echo "$(basename "$0"): unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
  done
}

# IMAGE and TEMPLATE_PATH, from PROJECT, REGION, REPOSITORY, BUCKET, IMAGE_NAME and TAG unless
# they are set themselves. Exits with a message naming the first missing variable.
resolve_names() {
  : "${PROJECT:?set PROJECT to your Google Cloud project id}"
  : "${REGION:?set REGION to the Dataflow region, e.g. europe-west1}"
  if [[ -n "${BUCKET:-}" && "$BUCKET" == gs://* ]]; then
    echo "$(basename "$0"): BUCKET is a bucket name, without gs:// (got '$BUCKET')" >&2
    exit 1
  fi
  IMAGE_NAME="${IMAGE_NAME:-email-personalization}"
  if [[ -z "${TAG:-}" ]]; then
    if ! TAG="$(git -C "$REPO_ROOT" describe --always --dirty --abbrev=12 2>/dev/null)"; then
      echo "$(basename "$0"): set TAG (the image and template version; the default is the git" \
           "commit, and this is not a git checkout)" >&2
      exit 1
    fi
  fi
  if [[ -z "${IMAGE:-}" ]]; then
    : "${REPOSITORY:?set REPOSITORY to your Artifact Registry Docker repository (or set IMAGE)}"
    IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/${IMAGE_NAME}:${TAG}"
  fi
  if [[ -z "${TEMPLATE_PATH:-}" ]]; then
    : "${BUCKET:?set BUCKET to a Cloud Storage bucket name, without gs:// (or set TEMPLATE_PATH)}"
    TEMPLATE_PATH="gs://${BUCKET}/templates/${IMAGE_NAME}-${TAG}.json"
  fi
}

# One command as a shell line that can be pasted back (arguments quoted where they need it).
show() {
  local words=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@,+%^-]+$ ]]; then
      words+=("$word")
    else
      words+=("${word@Q}")
    fi
  done
  echo "${words[*]}"
}

# Runs a command, or prints it on a dry run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show "$@"
  else
    echo "+ $(show "$@")" >&2
    "$@"
  fi
}
