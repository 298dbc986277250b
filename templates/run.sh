#!/usr/bin/env bash
# Launches (or, with UPDATE=1, updates) the streaming job from the flex template.
# Usage: templates/run.sh [--dry-run]   (variables: see usage below and docs/DEPLOY.md)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: templates/run.sh [--dry-run]

Starts the streaming job from the template that templates/build.sh wrote, with Streaming Engine,
throughput-based autoscaling and the template image as the workers' SDK container.

Required:  PROJECT, REGION, BUCKET (temp and staging files), SUBSCRIPTION
           (projects/P/subscriptions/S), and REPOSITORY (or IMAGE) and TAG as for build.sh
Optional:  JOB_NAME (email-personalization), MAX_WORKERS (10), NUM_WORKERS,
           WORKER_MACHINE_TYPE, SERVICE_ACCOUNT (worker service account email),
           DATAFLOW_KMS_KEY (Cloud KMS key of the job's state and disks, CMEK:
           projects/P/locations/L/keyRings/R/cryptoKeys/K),
           UPDATE=1 (replace the running job JOB_NAME in place), TRANSFORM_NAME_MAPPINGS
           (with UPDATE=1: OldStep=NewStep,...), DRY_RUN=1 (same as --dry-run),
           and any job parameter of templates/metadata.json as an upper-case variable:
           EVENTS, CUSTOMERS, CATALOG, DATASET, TRIGGERS_TOPIC, PUBSUB_ID_ATTRIBUTE, ...
See docs/DEPLOY.md.
EOF
}

# The parameter names of metadata.json, one a line.
parameter_names() {
  python3 -c 'import json, sys; print("\n".join(p["name"] for p in json.load(sys.stdin)["parameters"]))' \
    < "$REPO_ROOT/$METADATA_FILE"
}

# One --parameters value. gcloud splits a value on commas, so a value holding commas (the
# comma-separated --events patterns) uses gcloud's ^DELIM^ syntax with a delimiter it lacks.
gcloud_parameter() {
  local name="$1" value="$2" delim
  if [[ "$value" != *,* ]]; then
    echo "$name=$value"
    return
  fi
  for delim in '~' '|' ';' '#'; do
    if [[ "$value" != *"$delim"* ]]; then
      echo "^${delim}^$name=$value"
      return
    fi
  done
  echo "run.sh: cannot pass $name: its value holds commas and every delimiter gcloud could use" >&2
  exit 1
}

parse_args "$@"
resolve_names
: "${BUCKET:?set BUCKET to a Cloud Storage bucket name for temp and staging files, without gs://}"
: "${SUBSCRIPTION:?set SUBSCRIPTION to the events subscription, projects/PROJECT/subscriptions/NAME}"
JOB_NAME="${JOB_NAME:-email-personalization}"
MAX_WORKERS="${MAX_WORKERS:-10}"

args=(gcloud dataflow flex-template run "$JOB_NAME"
  --project "$PROJECT" --region "$REGION"
  --template-file-gcs-location "$TEMPLATE_PATH"
  --staging-location "gs://$BUCKET/staging" --temp-location "gs://$BUCKET/tmp"
  --enable-streaming-engine --max-workers "$MAX_WORKERS"
  --additional-pipeline-options "autoscaling_algorithm=THROUGHPUT_BASED"
  --parameters "sdk_container_image=$IMAGE")
if [[ -n "${NUM_WORKERS:-}" ]]; then args+=(--num-workers "$NUM_WORKERS"); fi
if [[ -n "${WORKER_MACHINE_TYPE:-}" ]]; then args+=(--worker-machine-type "$WORKER_MACHINE_TYPE"); fi
if [[ -n "${SERVICE_ACCOUNT:-}" ]]; then args+=(--service-account-email "$SERVICE_ACCOUNT"); fi
# Beam's --dataflow_kms_key: gcloud sets it as the job's key (not a parameter of the template).
if [[ -n "${DATAFLOW_KMS_KEY:-}" ]]; then
  kms_key='^projects/[^/[:space:]]+/locations/[a-z0-9-]+/keyRings/[A-Za-z0-9_-]+/cryptoKeys/[A-Za-z0-9_-]+$'
  if [[ ! "$DATAFLOW_KMS_KEY" =~ $kms_key ]]; then
    echo "run.sh: DATAFLOW_KMS_KEY must be projects/P/locations/L/keyRings/R/cryptoKeys/K, got" \
         "'$DATAFLOW_KMS_KEY'" >&2
    exit 2
  fi
  args+=(--dataflow-kms-key "$DATAFLOW_KMS_KEY")
fi

names="$(parameter_names)"
while read -r name; do
  var="${name^^}"
  if [[ -n "${!var:-}" ]]; then
    args+=(--parameters "$(gcloud_parameter "$name" "${!var}")")
  fi
done <<< "$names"

case "${UPDATE:-0}" in
  1|true|yes)
    args+=(--update)
    if [[ -n "${TRANSFORM_NAME_MAPPINGS:-}" ]]; then
      args+=(--transform-name-mappings "$TRANSFORM_NAME_MAPPINGS")
    fi
    ;;
  *)
    if [[ -n "${TRANSFORM_NAME_MAPPINGS:-}" ]]; then
      echo "run.sh: TRANSFORM_NAME_MAPPINGS only applies to an update: set UPDATE=1 too" >&2
      exit 2
    fi
    ;;
esac

run "${args[@]}"
