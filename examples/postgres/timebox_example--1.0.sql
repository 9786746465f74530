\echo Use "CREATE EXTENSION timebox_example" to load this file. \quit

-- Runs fn ('double', 'sleep', 'crash', 'spin') on arg in a child process
-- that is killed after timeout_ms, by method 'fork', 'forkserver', 'spawn'
-- or 'shared'.  PARALLEL RESTRICTED: the 'shared' and 'forkserver' methods
-- hold a connection per process, which a parallel worker would not share.
CREATE FUNCTION timebox_example_call(fn text, arg bigint,
                                     timeout_ms integer DEFAULT 1000,
                                     method text DEFAULT 'fork')
RETURNS bigint
AS 'MODULE_PATHNAME', 'timebox_example_call'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;
