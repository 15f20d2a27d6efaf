// Stand-alone driver for `metallic bench` (mt_cmd_bench), for builds whose CLI does not dispatch it yet.
//   cc -O2 -march=native -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -Icli -pthread cli/bench.c bench/bench-main.c
//      build/libmetallic.a -lm -pthread -lcjson -o build/bench-main
#include "bench.h"

int main(int argc, char **argv) {
    return mt_cmd_bench(argc - 1, argv + 1);
}
