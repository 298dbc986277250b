#!/usr/bin/env bash
# Builds and pushes the template image, then writes the flex template spec to Cloud Storage.
# Usage: templates/build.sh [--dry-run]   (variables: see usage below and docs/DEPLOY.md)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: templates/build.sh [--dry-run]

Builds the image of templates/Dockerfile (launcher and worker SDK container in one), pushes it,
and writes the flex template spec (with templates/metadata.json) to TEMPLATE_PATH.

Required:  PROJECT, REGION, and REPOSITORY (or IMAGE), BUCKET (or TEMPLATE_PATH)
Optional:  TAG (default: git describe --always --dirty), IMAGE_NAME (email-personalization),
           IMAGE (REGION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE_NAME:TAG),
           TEMPLATE_PATH (gs://BUCKET/templates/IMAGE_NAME-TAG.json),
           BUILDER: cloudbuild (default, no local Docker needed) or docker (local build + push),
           DRY_RUN=1: print the commands instead of running them (same as --dry-run).
See docs/DEPLOY.md.
EOF
}

parse_args "$@"
resolve_names
BUILDER="${BUILDER:-cloudbuild}"

cd "$REPO_ROOT"
case "$BUILDER" in
  cloudbuild)
    run gcloud builds submit . --project "$PROJECT" --config templates/cloudbuild.yaml \
      --substitutions "_IMAGE=$IMAGE"
    ;;
  docker)
    run docker build -f templates/Dockerfile -t "$IMAGE" .
    run docker push "$IMAGE"
    ;;
  *)
    echo "build.sh: BUILDER must be cloudbuild or docker, got '$BUILDER'" >&2
    exit 2
    ;;
esac
run gcloud dataflow flex-template build "$TEMPLATE_PATH" --project "$PROJECT" \
  --image "$IMAGE" --sdk-language PYTHON --metadata-file "$METADATA_FILE"
