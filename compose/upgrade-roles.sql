-- Hands a Kefu database created before the two roles (every table owned by the old superuser, `kefu`
-- in compose stacks before issue 11) to the owner role, so that `kefu migrate` can run as it and grant
-- the runtime role its rights. Run once, as that superuser, after postgres/init-roles.sh created the
-- roles (compose/README.md, "Database roles"):
--
--   psql -U kefu -d kefu -v ON_ERROR_STOP=1 -f upgrade-roles.sql            (owner: kefu_owner)
--   psql ... -v owner=another_owner -f upgrade-roles.sql
--
-- It changes the owner of every table (their sequences follow) and function of the public schema;
-- nothing else. Running it again changes nothing.
\if :{?owner}
\else
\set owner kefu_owner
\endif
SELECT set_config('kefu.upgrade_owner', :'owner', false);

DO $$
DECLARE
  owner text := current_setting('kefu.upgrade_owner');
  statement text;
BEGIN
  FOR statement IN
    SELECT format('ALTER TABLE public.%I OWNER TO %I', tablename, owner)
      FROM pg_tables WHERE schemaname = 'public'
    UNION ALL
    SELECT format('ALTER FUNCTION %s OWNER TO %I', p.oid::regprocedure, owner)
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
  LOOP
    EXECUTE statement;
  END LOOP;
END $$;
