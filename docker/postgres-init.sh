#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is first initialised (the postgres image runs
# /docker-entrypoint-initdb.d/*.sh as its superuser). One role per consumer, each owning only its
# databases: MLflow's (runs, and its basic-auth accounts) and Optuna's (the study storage), so
# that a worker given the Optuna password can read nothing of MLflow's.
# tests/test_deploy_postgres.py runs this same script against the test's PostgreSQL.
set -euo pipefail
: "${MLFLOW_DB_PASSWORD:?}" "${OPTUNA_DB_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v mlflow_password="$MLFLOW_DB_PASSWORD" -v optuna_password="$OPTUNA_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE optuna LOGIN PASSWORD :'optuna_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE optuna OWNER optuna;
REVOKE ALL ON DATABASE mlflow, mlflow_auth FROM PUBLIC;
REVOKE ALL ON DATABASE optuna FROM PUBLIC;
SQL
