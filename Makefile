# Metallic build.  make | make run | make test | make model | make bench | make format | make lint
# Sources are found by wildcard: src/**/*.c is the library, cli/ the binary, tests/test-*.c one test each.

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2 -march=native
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -MMD -MP -Iinclude -Isrc -pthread
LDLIBS  += -lm -pthread -lcjson -lncursesw
PYTHON  ?= .venv/bin/python
MODEL   ?= models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
PROMPT  ?= Write a C function that reverses a string.
THREADS ?=

# CUDA backend: CUDA=auto builds it when nvcc is on PATH, CUDA=1 forces it, CUDA=0 leaves it out (the
# CPU-only build never needs CUDA).
CUDA    ?= auto
NVCC    ?= nvcc
ifeq ($(CUDA),auto)
  override CUDA := $(if $(shell command -v $(NVCC) 2>/dev/null),1,0)
endif
ifeq ($(CUDA),1)
  CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC))))
  CU_SRC  := $(shell find src -name '*.cu' | sort)
  CFLAGS  += -DMT_CUDA
  NVFLAGS ?= -O3 -g -std=c++17 -gencode arch=compute_90,code=[sm_90,compute_90] -Xcompiler -Wall,-Wextra \
             -Werror all-warnings
  CU_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcublasLt -lcudart -lstdc++
endif
CU_OBJ   := $(CU_SRC:%.cu=$(BUILD)/%.cu.o)

LIB_SRC  := $(shell find src -name '*.c' | sort)
CLI_SRC  := $(wildcard cli/*.c)
TEST_SRC := $(wildcard tests/test-*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
LIB      := $(BUILD)/libmetallic.a

.PHONY: all deps run test model bench format lint clean asan
.SECONDARY:
all: deps $(BUILD)/metallic $(TEST_BIN)

deps: $(BUILD)/.deps
$(BUILD)/.deps: scripts/install-deps.sh
	@mkdir -p $(BUILD)
	sh scripts/install-deps.sh
	@touch $@

$(BUILD)/%.o: %.c | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu $(wildcard src/backend/cuda/*.cuh src/backend/cuda/*.h) | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -Iinclude -Isrc -c $< -o $@

# The bench rows carry the commit they measured (rebuilt each time: one small file).
COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
$(BUILD)/cli/bench.o: CFLAGS += -DMT_BUILD_COMMIT='"$(COMMIT)"'
$(BUILD)/cli/bench.o: FORCE
.PHONY: FORCE
FORCE:

$(LIB): $(LIB_OBJ) $(CU_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/metallic: $(CLI_OBJ) $(LIB)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(CU_LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(CU_LIBS)

model:
	sh scripts/get-model.sh $(MODEL)

run: all model
	$(BUILD)/metallic run $(MODEL) "$(PROMPT)" $(if $(THREADS),--threads $(THREADS))

test: all model
	sh scripts/run-tests.sh

# Sanitizer build of everything (the malformed-file corpus runs under it in `make test`).
asan:
	$(MAKE) CUDA=0 BUILD=build/asan OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	  LDLIBS="-lm -pthread -lcjson -lncursesw -fsanitize=address,undefined" all

format:
	clang-format -i $$(find src cli tests bench include -name '*.[ch]' -o -name '*.cu' -o -name '*.cuh')

lint:
	cppcheck --error-exitcode=1 --enable=warning,performance,portability --inline-suppr --quiet \
	  --suppress=missingIncludeSystem -Iinclude -Isrc src cli tests
	@clang-format --dry-run --Werror $$(find src cli tests bench include -name '*.[ch]')

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
