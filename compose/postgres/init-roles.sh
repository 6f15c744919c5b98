#!/bin/bash
# Kefu's two database roles (docs/audit.md), for the postgres image's /docker-entrypoint-initdb.d/:
#   owner (KEFU_OWNER_ROLE, default kefu_owner): owns the database and its schema; runs `kefu migrate`
#         (KEFU_MIGRATION_DATABASE_URL). Not a superuser.
#   app   (KEFU_APP_ROLE, default kefu_app): what gateway and workers connect as (KEFU_DATABASE_URL);
#         `kefu migrate` grants it its privileges (KEFU_DATABASE_APP_ROLE): INSERT and SELECT only on the
#         audit log. It owns nothing, so it cannot ALTER, DISABLE TRIGGER, DROP or TRUNCATE anything.
# Passwords: KEFU_OWNER_PASSWORD / KEFU_APP_PASSWORD, or KEFU_OWNER_PASSWORD_FILE / KEFU_APP_PASSWORD_FILE
# (Docker secrets). The database is KEFU_DB, default POSTGRES_DB. Safe to run again: existing roles keep
# their passwords. Needs psql >= 15 (\getenv); passwords never appear on a command line.
set -euo pipefail

secret() {  # secret NAME: $NAME, or the content of the file $NAME_FILE ($(secret …) strips its trailing newlines)
    local file_var="${1}_FILE"
    if [ -n "${!file_var:-}" ]; then
        cat "${!file_var}"
    else
        printf '%s' "${!1:-}"
    fi
}

export KEFU_INIT_OWNER="${KEFU_OWNER_ROLE:-kefu_owner}"
export KEFU_INIT_APP="${KEFU_APP_ROLE:-kefu_app}"
export KEFU_INIT_DB="${KEFU_DB:-${POSTGRES_DB:-kefu}}"
KEFU_INIT_OWNER_PASSWORD=$(secret KEFU_OWNER_PASSWORD)
KEFU_INIT_APP_PASSWORD=$(secret KEFU_APP_PASSWORD)
export KEFU_INIT_OWNER_PASSWORD KEFU_INIT_APP_PASSWORD
if [ -z "$KEFU_INIT_OWNER_PASSWORD" ] || [ -z "$KEFU_INIT_APP_PASSWORD" ]; then
    echo "init-roles: set KEFU_OWNER_PASSWORD and KEFU_APP_PASSWORD (or their _FILE variants)" >&2
    exit 1
fi

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" --dbname "$KEFU_INIT_DB" <<'SQL'
\getenv owner KEFU_INIT_OWNER
\getenv app KEFU_INIT_APP
\getenv db KEFU_INIT_DB
\getenv owner_pw KEFU_INIT_OWNER_PASSWORD
\getenv app_pw KEFU_INIT_APP_PASSWORD
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'owner', :'owner_pw')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'app', :'app_pw')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app') \gexec
ALTER ROLE :"owner" NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
ALTER ROLE :"app" NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
ALTER DATABASE :"db" OWNER TO :"owner";
ALTER SCHEMA public OWNER TO :"owner";
-- nobody but the owner creates objects (PostgreSQL < 15 let every role create in public)
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";
SQL
echo "init-roles: database $KEFU_INIT_DB owned by $KEFU_INIT_OWNER; runtime role $KEFU_INIT_APP"
