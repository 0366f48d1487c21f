#!/bin/sh
# MLflow's tracking server behind its own HTTP basic authentication (`mlflow server --app-name basic-auth`),
# for docker/compose.yaml and cluster/kuberay/mlflow.yaml. Secrets come from the environment only (MLflow
# reads them there), never from a file in the image or a command line:
#   MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD  the admin account, created on the first start; the
#                                   Ray nodes log in with it (MLFLOW_TRACKING_USERNAME / _PASSWORD)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  signs the UI's CSRF tokens
#   MLFLOW_AUTH_DATABASE_URI        users and permissions (default: a SQLite file in MLFLOW_AUTH_DIR, a local
#                                   volume written by this server alone)
# Anyone else gets no permission by default. Remaining arguments go to `mlflow server`.
set -eu
: "${MLFLOW_AUTH_ADMIN_USERNAME:?set MLFLOW_AUTH_ADMIN_USERNAME}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY}"
auth_dir="${MLFLOW_AUTH_DIR:-/tmp/mlflow-auth}"
umask 077
mkdir -p "$auth_dir"
cat > "$auth_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$auth_dir/basic_auth.db}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$auth_dir/basic_auth.ini"
exec mlflow server --app-name basic-auth "$@"
