#!/usr/bin/env bash
# airflow-init's first step: refuse to start the stack while any variable this container received still
# holds a placeholder from deploy/airflow.env.example ("change-me..."). It prints the variables' names,
# never their values, and exits 1, so airflow-init fails and no other Airflow service starts.
set -euo pipefail

found=()
while IFS= read -r name; do
  value="${!name-}"
  if [[ "${value,,}" =~ change[-_\ ]?me ]]; then
    found+=("${name}")
  fi
done < <(compgen -e | LC_ALL=C sort)

if ((${#found[@]})); then
  echo "refusing to start: these variables still hold a change-me placeholder from deploy/airflow.env.example:" >&2
  printf '  %s\n' "${found[@]}" >&2
  echo "Set real values in deploy/airflow.env (a connection kept in a secrets backend may be left empty)," >&2
  echo "then run docker compose --env-file deploy/airflow.env up -d again." >&2
  exit 1
fi
echo "no placeholder values among $(compgen -e | wc -l) variables"
