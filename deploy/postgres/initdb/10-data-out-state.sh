#!/usr/bin/env bash
# Creates the Data Out state database and its own role next to Airflow's metadata database.
#
# The postgres image runs this once, when it initialises an empty data volume
# (/docker-entrypoint-initdb.d); on an existing volume it does not run again, so changing the
# DATA_OUT_STATE_DB_* variables later changes nothing here (alter the role by hand, or start afresh).
set -euo pipefail

: "${DATA_OUT_STATE_DB_NAME:?}" "${DATA_OUT_STATE_DB_USER:?}" "${DATA_OUT_STATE_DB_PASSWORD:?}"

if [[ "${DATA_OUT_STATE_DB_NAME}" == "${POSTGRES_DB}" ]]; then
  echo "DATA_OUT_STATE_DB_NAME must differ from Airflow's metadata database (${POSTGRES_DB})" >&2
  exit 1
fi

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
  --set=state_db="${DATA_OUT_STATE_DB_NAME}" \
  --set=state_user="${DATA_OUT_STATE_DB_USER}" \
  --set=state_password="${DATA_OUT_STATE_DB_PASSWORD}" \
  --set=airflow_db="${POSTGRES_DB}" <<'SQL'
CREATE ROLE :"state_user" LOGIN PASSWORD :'state_password';
CREATE DATABASE :"state_db" OWNER :"state_user";
-- Tasks may not touch Airflow's metadata database (Airflow 3); the Data Out role cannot even connect.
REVOKE CONNECT, TEMPORARY ON DATABASE :"airflow_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"state_db" FROM PUBLIC;
SQL

echo "created database ${DATA_OUT_STATE_DB_NAME} owned by ${DATA_OUT_STATE_DB_USER}"
