// `metallic ab MODEL PROMPT [--max-tokens N] [--seed S] [--temperature T] [--threads N] [--ctx N]
// [--out DIR]`: legacy vs graph on the same prompt, in latency mode, compared side by side.
#ifndef MT_CLI_CMD_AB_H
#define MT_CLI_CMD_AB_H

// argv[0] is the first argument after `ab`. Returns the exit code: 0 ok, 1 a run failed, 2 usage.
int mt_cmd_ab(int argc, char **argv);

#endif
