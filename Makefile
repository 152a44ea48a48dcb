# hl7bridge — plain GNU make.
#   make            build build/hl7bridge (release, -O2)
#   make run        install missing deps, build, start the daemon on config/hl7bridge.yaml
#   make test       install missing deps, build, run unit + integration tests,
#                   unit tests again under ASan and UBSan
#   make bench      load benchmark: hl7bridge vs the null MLLP responder
#   make bench-pg   the same on a throwaway local PostgreSQL (store.type postgresql)
#   make bench-floor  the durable commit alone on this disk (SQLite store, append-only log)
#   make soak       5M messages with retention purging, sampled every 10 s (SOAK_* variables)
#   make fuzz       libFuzzer targets (FUZZ_SECONDS each)
#   make lint       banned functions, cppcheck
#   make install    PREFIX=/usr/local DESTDIR= SYSCONFDIR=/etc LOCALSTATEDIR=/var
#   make deb        a Debian package in build/ (dpkg-deb, from this tree)
#   SANITIZER=address|undefined  builds into build-<sanitizer>/
#   DEBUG=1                      -O0 -g3 build into build-debug/

CC      ?= cc
PREFIX  ?= /usr/local
DESTDIR ?=
# The configuration and the state live where an administrator looks for them,
# whatever PREFIX the binary goes under.
SYSCONFDIR    ?= /etc
LOCALSTATEDIR ?= /var
BINDIR        ?= $(PREFIX)/bin
DATADIR       ?= $(PREFIX)/share/hl7bridge
DOCDIR        ?= $(PREFIX)/share/doc/hl7bridge
UNITDIR       ?= $(PREFIX)/lib/systemd/system
STATEDIR      ?= $(LOCALSTATEDIR)/lib/hl7bridge
PKGS    := openssl libcurl sqlite3 yaml-0.1 libmicrohttpd jansson libpq

WARN := -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wpointer-arith -Wcast-qual -Wwrite-strings -Wvla -Wformat=2 -fno-common -Werror
DEFS := -D_GNU_SOURCE -D_FORTIFY_SOURCE=2

ifeq ($(SANITIZER),)
  ifeq ($(DEBUG),1)
    BUILD := build-debug
    OPT   := -O0 -g3 -U_FORTIFY_SOURCE
  else
    BUILD := build
    OPT   := -O2 -g
  endif
  SANFLAGS :=
else
  BUILD := build-$(SANITIZER)
  OPT   := -O1 -g -fno-omit-frame-pointer
  SANFLAGS := -fsanitize=$(SANITIZER) -fno-sanitize-recover=all
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS  += $(WARN) $(DEFS) $(OPT) $(SANFLAGS) -I. $(PKG_CFLAGS) -MMD -MP
LDFLAGS += $(SANFLAGS)
LDLIBS  += $(PKG_LIBS) -lpthread -lm

MODULES  := core mllp hl7 mapping store sinks config
LIB_SRCS := $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
BIN_SRCS := $(wildcard daemon/*.c)
BIN_OBJS := $(BIN_SRCS:%.c=$(BUILD)/%.o) $(BUILD)/gen/default_config.o $(BUILD)/gen/default_rules.o
# The shipped rules, in the order they apply (compiled into the binary too).
RULE_FILES := config/mappings/adt.yaml config/mappings/siu.yaml config/mappings/access-audit.yaml
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_SRCS := $(wildcard tests/bench/*.c)
BENCH_BINS := $(BENCH_SRCS:tests/bench/%.c=$(BUILD)/bench/%)
FUZZ_TARGETS := $(notdir $(wildcard tests/fuzz/*))

.PHONY: all deps test-deps run test unit unit-asan unit-ubsan integration bench bench-pg bench-floor soak fuzz fuzz-short \
        lint install deb clean
all: $(BUILD)/hl7bridge

# Made anew each time: `ar r` keeps members whose source is gone (a moved or
# removed module would otherwise still be linked from an old build folder).
$(BUILD)/libhl7bridge.a: $(LIB_OBJS)
	@mkdir -p $(@D)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/hl7bridge: $(BIN_OBJS) $(BUILD)/libhl7bridge.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The shipped configuration is compiled in: `hl7bridge run` falls back to it
# when no -c is given and config/hl7bridge.yaml is not there.
# Its state paths are written relative to config/ (../var/…); the compiled-in
# copy keeps them in the working directory (var/…).
$(BUILD)/gen/default_config.c: config/hl7bridge.yaml scripts/embed.sh
	@mkdir -p $(@D)
	sed 's|\.\./var/|var/|' $< > $(BUILD)/gen/default_config.yaml
	scripts/embed.sh $(BUILD)/gen/default_config.yaml $@ hb_default_config

# The shipped rules likewise: a configuration without mapping.rules uses
# these, from any working directory.
$(BUILD)/gen/default_rules.c: $(RULE_FILES) scripts/embed.sh
	@mkdir -p $(@D)
	scripts/embed.sh --rules $@ hb_default_rules $(RULE_FILES)

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -Wno-missing-prototypes -c -o $@ $<

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

# Each unit test links only the modules it tests (plus core), so one module
# being reworked never breaks another module's tests.  A test not listed links
# every module.
MODS_test_hl7     := core hl7
MODS_test_mllp    := core mllp
MODS_test_store   := core store
MODS_test_powerloss := core store
MODS_test_config  := core config
MODS_test_mapping := core hl7 mapping
MODS_test_core    := core
mod_objs = $(patsubst %.c,$(BUILD)/%.o,$(foreach m,$(1),$(wildcard $(m)/*.c)))
test_objs = $(call mod_objs,$(if $(MODS_$(1)),$(MODS_$(1)),$(MODULES)))

.SECONDEXPANSION:
$(BUILD)/tests/%: tests/unit/%.c $$(call test_objs,$$*)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(call test_objs,$*) $(LDFLAGS) $(LDLIBS) -lcmocka

$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/libhl7bridge.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libhl7bridge.a $(LDFLAGS) $(LDLIBS)

deps:
	@scripts/deps.sh build
test-deps:
	@scripts/deps.sh test

run: deps all
	@mkdir -p var
	./$(BUILD)/hl7bridge run -c config/hl7bridge.yaml

# Unit tests run from the project root so they can find tests/fixtures and
# ../shared/corpus.
unit: $(UNIT_BINS)
	@scripts/run-unit.sh $(UNIT_BINS)

unit-asan:
	$(MAKE) --no-print-directory SANITIZER=address unit
unit-ubsan:
	$(MAKE) --no-print-directory SANITIZER=undefined unit

integration: all $(BENCH_BINS)
	@scripts/run-integration.sh $(BUILD)

test: test-deps
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory integration
	scripts/valgrind-smoke.sh $(BUILD)
	$(MAKE) --no-print-directory unit-asan
	$(MAKE) --no-print-directory unit-ubsan
	$(MAKE) --no-print-directory fuzz-short
	@scripts/summary.sh

bench: deps all $(BENCH_BINS)
	@scripts/bench.sh $(BUILD)

bench-pg: test-deps all $(BUILD)/bench/loadgen $(BUILD)/bench/null_responder
	@/usr/bin/python3 tests/bench/pg_bench.py $(BUILD)

# What a durable commit costs on this disk without network or HL7: the
# store's own database and an append-only log, groups of 8/32/128 messages.
bench-floor: deps $(BUILD)/bench/commit_floor
	@mkdir -p var
	@$(BUILD)/bench/commit_floor --dir var/commit_floor

soak: deps all $(BUILD)/bench/loadgen
	@scripts/soak.sh $(BUILD)

FUZZ_SECONDS ?= 60
fuzz:
	@scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)
fuzz-short:
	@scripts/fuzz.sh $${FUZZ_SHORT_SECONDS:-12} $(FUZZ_TARGETS)

lint:
	@scripts/lint.sh

# The binary, the configuration (never over an existing one: it is the
# administrator's), the shipped rules as examples to copy (the binary has them
# built in), the state directory and the systemd unit.  The installed
# configuration keeps its state in STATEDIR instead of the tree's ../var/.
install: $(BUILD)/hl7bridge
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/mappings $(DESTDIR)$(DOCDIR) \
	    $(DESTDIR)$(SYSCONFDIR)/hl7bridge $(DESTDIR)$(UNITDIR)
	install -d -m 0750 $(DESTDIR)$(STATEDIR)
	install -m 0755 $(BUILD)/hl7bridge $(DESTDIR)$(BINDIR)/hl7bridge
	install -m 0644 $(RULE_FILES) $(DESTDIR)$(DATADIR)/mappings/
	install -m 0644 config/users.csv $(DESTDIR)$(DATADIR)/users.csv
	sed -e 's|\.\./var/|$(STATEDIR)/|' -e 's|/usr/local/share/hl7bridge/|$(DATADIR)/|' \
	    config/hl7bridge.yaml > $(BUILD)/hl7bridge.yaml.installed
	install -m 0644 $(BUILD)/hl7bridge.yaml.installed $(DESTDIR)$(DATADIR)/hl7bridge.yaml
	if [ -e $(DESTDIR)$(SYSCONFDIR)/hl7bridge/hl7bridge.yaml ]; then \
	    echo "install: keeping $(DESTDIR)$(SYSCONFDIR)/hl7bridge/hl7bridge.yaml (new one: $(DATADIR)/hl7bridge.yaml)"; \
	else \
	    install -m 0644 $(BUILD)/hl7bridge.yaml.installed $(DESTDIR)$(SYSCONFDIR)/hl7bridge/hl7bridge.yaml; \
	fi
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	    -e 's|@STATEDIR@|$(STATEDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
	    packaging/hl7bridge.service.in > $(BUILD)/hl7bridge.service
	install -m 0644 $(BUILD)/hl7bridge.service $(DESTDIR)$(UNITDIR)/hl7bridge.service
	install -m 0644 README.md docs/mapping.md $(DESTDIR)$(DOCDIR)/
	install -m 0644 packaging/prometheus/hl7bridge-alerts.yaml \
	    packaging/grafana/hl7bridge-dashboard.json $(DESTDIR)$(DATADIR)/

# A Debian package of this tree, built offline with dpkg-deb.
deb: $(BUILD)/hl7bridge
	packaging/build-deb.sh $(BUILD)

clean:
	rm -rf build build-* var/test-*

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
