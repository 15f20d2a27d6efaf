// `metallic bench`: llama-bench style prefill (pp<N>) and decode (tg<N>) throughput of a model, printed
// as a markdown table, JSON, CSV or JSON lines with llama-bench's field names.
#ifndef MT_CLI_BENCH_H
#define MT_CLI_BENCH_H

// argv[0] is the model path or the first flag (the subcommand name is not included). Returns the exit
// code: 0 ok, 1 a model/runtime error, 2 a usage error (one line naming the flag).
int mt_cmd_bench(int argc, char **argv);

#endif
