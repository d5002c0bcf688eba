#!/usr/bin/env bash
# Creates Airflow's metadata database and the Data Out state database, each owned by its own ordinary
# role (no superuser, no CREATEDB, no CREATEROLE), on the postgres server whose superuser only this
# script uses.
#
# The postgres image runs this once, when it initialises an empty data volume
# (/docker-entrypoint-initdb.d); on an existing volume it does not run again, so changing the
# AIRFLOW_DB_* or DATA_OUT_STATE_DB_* variables later changes nothing here (alter the roles by hand, or
# start afresh with docker compose down -v). If it fails, fix the variables and start afresh the same way:
# the image does not rerun init scripts on a volume it already initialised.
set -euo pipefail

: "${AIRFLOW_DB_NAME:?}" "${AIRFLOW_DB_USER:?}" "${AIRFLOW_DB_PASSWORD:?}"
: "${DATA_OUT_STATE_DB_NAME:?}" "${DATA_OUT_STATE_DB_USER:?}" "${DATA_OUT_STATE_DB_PASSWORD:?}"

fail() {
  echo "$*" >&2
  exit 1
}
[[ "${DATA_OUT_STATE_DB_NAME}" != "${AIRFLOW_DB_NAME}" ]] ||
  fail "DATA_OUT_STATE_DB_NAME must differ from Airflow's metadata database (${AIRFLOW_DB_NAME})"
[[ "${DATA_OUT_STATE_DB_USER}" != "${AIRFLOW_DB_USER}" ]] ||
  fail "DATA_OUT_STATE_DB_USER must differ from AIRFLOW_DB_USER: each database has its own role"
for role in "${AIRFLOW_DB_USER}" "${DATA_OUT_STATE_DB_USER}"; do
  [[ "${role}" != "${POSTGRES_USER}" ]] || fail "${role} is the postgres superuser; Airflow and Data Out must not be"
done
for db in "${AIRFLOW_DB_NAME}" "${DATA_OUT_STATE_DB_NAME}"; do
  [[ "${db}" != "${POSTGRES_DB}" ]] || fail "database ${db} must differ from the server's own (${POSTGRES_DB})"
done

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
  --set=airflow_db="${AIRFLOW_DB_NAME}" \
  --set=airflow_user="${AIRFLOW_DB_USER}" \
  --set=airflow_password="${AIRFLOW_DB_PASSWORD}" \
  --set=state_db="${DATA_OUT_STATE_DB_NAME}" \
  --set=state_user="${DATA_OUT_STATE_DB_USER}" \
  --set=state_password="${DATA_OUT_STATE_DB_PASSWORD}" \
  --set=server_db="${POSTGRES_DB}" <<'SQL'
CREATE ROLE :"airflow_user" LOGIN PASSWORD :'airflow_password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE DATABASE :"airflow_db" OWNER :"airflow_user";
CREATE ROLE :"state_user" LOGIN PASSWORD :'state_password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE DATABASE :"state_db" OWNER :"state_user";
-- Each role reaches its own database only. Tasks may not touch Airflow's metadata database (Airflow 3):
-- the Data Out role cannot even connect to it; nor can Airflow's role reach the state database.
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"state_db" FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE :"server_db" FROM PUBLIC;
SQL

echo "created database ${AIRFLOW_DB_NAME} owned by ${AIRFLOW_DB_USER}, ${DATA_OUT_STATE_DB_NAME} owned by ${DATA_OUT_STATE_DB_USER}"
