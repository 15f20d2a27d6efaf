// Command-line parsing for `metallic`: subcommand, positionals, flags and environment variables, with
// every bad value reported on one line naming the flag (or variable) and the value.
#ifndef MT_CLI_ARGS_H
#define MT_CLI_ARGS_H

#include <stdbool.h>

#include "exec/registry.h"
#include "model/sampler.h"

#define MT_CLI_VERSION "0.1.0"

typedef enum cli_cmd { CLI_RUN, CLI_CHAT, CLI_INSPECT, CLI_TOKENIZE, CLI_HELP, CLI_VERSION } cli_cmd;
typedef enum cli_format { CLI_TEXT, CLI_JSON, CLI_TUI } cli_format;

// Bits of cli_opts.sampler_set: the sampler fields given by a flag (they beat the model's defaults).
enum {
    CLI_SET_TEMPERATURE = 1 << 0,
    CLI_SET_TOP_K = 1 << 1,
    CLI_SET_TOP_P = 1 << 2,
    CLI_SET_MIN_P = 1 << 3,
    CLI_SET_REPEAT_PENALTY = 1 << 4,
    CLI_SET_REPEAT_LAST_N = 1 << 5,
    CLI_SET_SEED = 1 << 6,
};

typedef struct cli_opts {
    cli_cmd cmd;
    const char *model;  // path to a .gguf file or a Hugging Face folder
    const char *prompt; // run: the prompt ("-" = read stdin); tokenize: the text
    int max_tokens;
    mt_sampler_params sampler; // only the fields flagged in sampler_set are meaningful
    unsigned sampler_set;
    int ctx;     // 0 = the model's context length
    int threads; // 0 = one per core
    const char *system;
    bool raw;
    int logprobs;
    cli_format format;
    const char *device;       // "cpu", "cuda", or NULL: cuda when this build has it and a GPU is present
    const char *backend;      // "legacy", "graph", "auto"
    const char *sdpa_backend; // same values, for attention only
    // The backend values given as flags only (NULL when not given), for the registry, which reads the
    // environment itself; op_backend holds each --op-backend OP=PATH in order.
    const char *backend_flag, *sdpa_backend_flag;
    const char *op_backend[MT_REGISTRY_MAX_OP_FLAGS];
    int n_op_backend;
    int verbose;
} cli_opts;

// Fills `o` from argv and the environment (a flag beats its variable). Returns 0 on success; otherwise
// prints one line on stderr and returns the exit code to use (2 for usage errors).
int cli_parse(int argc, char **argv, cli_opts *o);
void cli_print_help(void);
// Hands the backend flags to the process-wide registry (mt_registry_configure, which also checks every
// METALLIC_FORCE_<OP>_BACKEND variable). Returns 0, or 2 after printing the one-line error.
int cli_configure_backends(const cli_opts *o);
// The model's generation defaults (`defaults`), then the sampler flags the user gave.
void cli_sampler_params(const cli_opts *o, const mt_sampler_params *defaults, mt_sampler_params *p);

#endif
