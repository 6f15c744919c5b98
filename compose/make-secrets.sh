#!/bin/sh
# Writes compose/secrets/, the files docker-compose.yml hands to the services as compose secrets:
#
#   postgres_password            the PostgreSQL superuser's (the postgres image only; no Kefu service)
#   kefu_owner_password          the owner role kefu_owner (runs the migrations)
#   kefu_app_password            the runtime role kefu_app (may only append to the audit log)
#   kefu_migration_database_url  postgresql+psycopg://kefu_owner:...@postgres:5432/kefu
#   kefu_database_url            postgresql+psycopg://kefu_app:...@postgres:5432/kefu
#   kefu_secret_key              the HMAC key of web visitor tokens
#   kefu_admin_token             the admin API's bearer token (the gateway's /v1/admin/, the agent console)
#   grafana_admin_password       Grafana's admin user (monitoring profile)
#
# Random values (hex, so they are safe inside a URL). A file that exists is never changed, so running
# this again only adds what is missing. The directory is 700 (only you on the host); the files are
# 644, because compose bind-mounts them as they are and the containers' users (postgres, kefu uid
# 10001) must read them. The roles' passwords take effect when PostgreSQL first initializes its
# volume; to change one later see README.md ("Database roles").
set -eu

dir="$(dirname "$0")/secrets"
umask 022
mkdir -p "$dir"
chmod 700 "$dir"

random() {
    head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'
}

# write NAME VALUE: only when the file is missing or empty
write() {
    if [ ! -s "$dir/$1" ]; then
        printf '%s\n' "$2" > "$dir/$1"
        chmod 644 "$dir/$1"
        echo "wrote $dir/$1"
    fi
}

write postgres_password "$(random 24)"
write kefu_owner_password "$(random 24)"
write kefu_app_password "$(random 24)"
write kefu_secret_key "$(random 32)"
write kefu_admin_token "$(random 24)"
write grafana_admin_password "$(random 16)"
write kefu_migration_database_url \
    "postgresql+psycopg://kefu_owner:$(cat "$dir/kefu_owner_password")@postgres:5432/kefu"
write kefu_database_url \
    "postgresql+psycopg://kefu_app:$(cat "$dir/kefu_app_password")@postgres:5432/kefu"
