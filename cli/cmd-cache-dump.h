// `metallic cache-dump`: a short generation, then the backend of every op and every cache's statistics.
#ifndef MT_CLI_CMD_CACHE_DUMP_H
#define MT_CLI_CMD_CACHE_DUMP_H

// argv[0] is the first argument after "cache-dump". Returns the exit code: 0 ok, 1 a model/runtime
// error, 2 a usage error (one line naming the flag or variable).
int mt_cmd_cache_dump(int argc, char **argv);

#endif
