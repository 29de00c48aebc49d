#!/usr/bin/env python3
"""Calls one function of a waiting parent process on an emulated CPU (Bochs).

Usage: bochs_call.py PID FS_BASE RIP RSP [ARG ...]   (numbers in decimal or 0x hex)

The parent (a test) has spawned this script and blocks until it exits. The
script builds x86_64 page tables that mirror every readable mapping of the
parent, copies pages from /proc/PID/mem the first time the emulated CPU
touches them, runs the System V call RIP(ARG0, ARG1, ...) on Bochs's CPU
(which implements AVX-512), with the calling thread's FS base so that its
thread-locals (malloc's caches among them) work, and when the function
returns writes back every byte it changed. A system call cannot work: it
faults, and the fault is reported. Nothing runs natively: code, statics, stack and heap are the
parent's bytes, executed by the emulator.

With BOCHS_COUNT_INSTRUCTIONS=1 it also counts the instructions the call
executes (a Python callback per instruction: slow, for small calls).

Exit codes: 0 the call returned; 1 it faulted or the harness failed (the
reason is on stderr); 3 the emulator (the `bochscpu-python` package) is not
importable here. One JSON line on stdout reports pages read and written.
"""

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time

PAGE = 0x1000
# Where the call returns to: a page never mapped, so returning raises #PF with RIP there.
RETURN_TO = 0x1000
PML4_PA = 0x10_0000
DATA_PA = 0x1000_0000
# XCR0: x87, SSE, AVX, AVX-512 opmask, ZMM_Hi256 and Hi16_ZMM state enabled.
XCR0 = 0xE7


def load_bochscpu():
    """Imports bochscpu; wheels built against glibc >= 2.38 get a two-symbol shim first."""
    try:
        import bochscpu  # noqa: F401
        return sys.modules["bochscpu"]
    except ImportError as e:
        if "__isoc23_" not in str(e):
            raise
    shim_dir = os.path.join(tempfile.gettempdir(), "shrinkray-bochs-shim")
    os.makedirs(shim_dir, exist_ok=True)
    so = os.path.join(shim_dir, "libisoc23.so")
    if not os.path.exists(so):
        src = os.path.join(shim_dir, "isoc23.c")
        with open(src, "w") as f:
            f.write(
                "#include <stdarg.h>\n#include <stdio.h>\n#include <stdlib.h>\n"
                "unsigned long long __isoc23_strtoull(const char *s, char **e, int b)"
                " { return strtoull(s, e, b); }\n"
                "int __isoc23_sscanf(const char *s, const char *f, ...)"
                " { va_list a; va_start(a, f); int r = vsscanf(s, f, a); va_end(a); return r; }\n"
            )
        tmp = so + f".{os.getpid()}"
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", tmp, src], check=True)
        os.replace(tmp, so)
    ctypes.CDLL(so, mode=ctypes.RTLD_GLOBAL)
    import bochscpu  # noqa: F401
    return sys.modules["bochscpu"]


def describe(pid, addr):
    """`addr` as "file+offset" from the parent's maps (for fault messages)."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                name = parts[5] if len(parts) > 5 else "anonymous"
                return f"{name}+{addr - lo + int(parts[2], 16):#x}"
    return "unmapped"


def readable_ranges(pid):
    """(start, end) of every readable mapping of the parent except the kernel's own pages."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            name = parts[5] if len(parts) > 5 else ""
            if parts[1][0] != "r" or name in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            out.append((lo, hi))
    return out


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 1
    pid, fs_base, rip, rsp, *args = (int(a, 0) for a in sys.argv[1:])
    try:
        bochscpu = load_bochscpu()
    except Exception as e:  # no package, or a wheel this machine cannot load
        print(f"bochs_call: the emulator is not available: {e}", file=sys.stderr)
        return 3
    import bochscpu.cpu
    import bochscpu.memory

    t0 = time.monotonic()
    try:
        mem = open(f"/proc/{pid}/mem", "r+b", buffering=0)
        mem.seek(rsp & ~(PAGE - 1))
        mem.read(PAGE)
    except OSError as e:
        # Reading another process's memory needs ptrace rights over it (Yama's
        # ptrace_scope 1 or more forbids it for a parent): the emulator cannot work here.
        print(f"bochs_call: cannot read the test process's memory: {e}", file=sys.stderr)
        return 3
    pt = bochscpu.memory.PageMapLevel4Table()
    va_of = {}  # guest-physical page -> parent virtual page
    pa_of = {}  # parent virtual page -> guest-physical page
    pa = DATA_PA
    for lo, hi in readable_ranges(pid):
        for va in range(lo, hi, PAGE):
            pt.insert(va, pa, 1)  # present, user, writable, executable
            va_of[pa] = va
            pa_of[va] = pa
            pa += PAGE
    for hva, gpa in pt.commit(PML4_PA):
        bochscpu.memory.page_insert(gpa, hva)
    assert PML4_PA + PAGE * (len(va_of) // 256 + 64) < DATA_PA, "page tables overlap data"

    original = {}  # guest-physical page -> bytes first read from the parent

    def missing_page(gpa):
        gpa &= ~(PAGE - 1)
        va = va_of.get(gpa)
        if va is None:
            raise RuntimeError(f"guest-physical page {gpa:#x} is not a mapped page")
        mem.seek(va)
        try:
            data = mem.read(PAGE)
        except OSError:
            data = b""
        data = data.ljust(PAGE, b"\0")
        hva = bochscpu.memory.allocate_host_page()
        bochscpu.memory.page_insert(gpa, hva)
        bochscpu.memory.phy_write(gpa, bytearray(data))
        original[gpa] = data

    def guest_words(va, n):
        """`n` little-endian words at `va` as the emulated CPU sees them (0 where unmapped)."""
        words = []
        for a in range(va, va + 8 * n, 8):
            gpa = pa_of.get(a & ~(PAGE - 1))
            if gpa is None:
                words.append(0)
                continue
            if gpa not in original:
                missing_page(gpa)
            raw = bytes(bochscpu.memory.phy_read(gpa + a % PAGE, 8))
            words.append(int.from_bytes(raw, "little"))
        return words

    def code_on_stack(rsp):
        """The stack words that point into executable mappings: a rough backtrace."""
        exe = []
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split()
                if "x" in parts[1]:
                    exe.append(tuple(int(x, 16) for x in parts[0].split("-")))
        hits = [w for w in guest_words(rsp, 256) if any(lo <= w < hi for lo, hi in exe)]
        return ", ".join(describe(pid, w) for w in hits[:12])

    outcome = {}

    def exception(sess, cpu_id, vector, error_code):
        st = sess.cpu.state
        if vector == 14 and st.rip == RETURN_TO:
            outcome["returned"] = True
        else:
            outcome["fault"] = (
                f"exception {vector} (error code {error_code}) at rip {st.rip:#x}"
                f" ({describe(pid, st.rip)}), cr2 {st.cr2:#x}; code addresses on the stack:"
                f" {code_on_stack(st.rsp)}"
            )
        sess.stop()

    sess = bochscpu.Session()
    sess.missing_page_handler = missing_page
    state = bochscpu.State()
    bochscpu.cpu.set_long_mode(state)
    cr0 = bochscpu.cpu.ControlRegister(state.cr0)
    cr0.MP = True
    cr0.EM = False
    cr4 = bochscpu.cpu.ControlRegister(state.cr4)
    cr4.OSFXSR = True
    cr4.OSXMMEXCPT = True
    cr4.OSXSAVE = True
    state.cr0 = int(cr0)
    state.cr4 = int(cr4)
    state.xcr0 = XCR0
    state.cr3 = PML4_PA
    state.mxcsr = 0x1F80  # round to nearest even, every exception masked (Linux's default)
    state.fpcw = 0x37F

    code = bochscpu.Segment()
    code.base, code.limit, code.selector = 0, 0xFFFF_FFFF, 0x33
    flags = bochscpu.cpu.SegmentFlags()
    flags.A = flags.R = flags.E = flags.S = flags.P = flags.L = True
    code.attr = int(flags)
    segs = []
    for sel in (0x2B, 0, 0, 0, 0):
        s = bochscpu.Segment()
        s.base, s.limit, s.selector, s.attr = 0, 0xFFFF_FFFF, sel, 0xCF3
        s.present = True
        segs.append(s)
    state.cs = code
    segs[3].base = fs_base
    state.ss, state.ds, state.es, state.fs, state.gs = segs

    regs = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
    if len(args) > len(regs):
        print("bochs_call: at most 6 arguments", file=sys.stderr)
        return 1
    for name, value in zip(regs, args):
        setattr(state, name, value)
    state.rip = rip
    state.rsp = rsp
    state.rflags = 0x202
    sess.cpu.state = state
    # The return address, written into the parent's stack page as the emulator sees it.
    page = rsp & ~(PAGE - 1)
    gpa = pa_of.get(page)
    if gpa is None or rsp % PAGE > PAGE - 8:
        print(f"bochs_call: the stack pointer {rsp:#x} is not in a readable mapping", file=sys.stderr)
        return 1
    missing_page(gpa)
    bochscpu.memory.phy_write(gpa + rsp % PAGE, bytearray(RETURN_TO.to_bytes(8, "little")))
    original[gpa] = bytes(bochscpu.memory.phy_read(gpa, PAGE))

    hook = bochscpu.Hook()
    hook.exception = exception
    executed = [0]
    counting = os.environ.get("BOCHS_COUNT_INSTRUCTIONS") == "1"
    if counting:

        def count(_sess, _cpu, _insn):
            executed[0] += 1

        hook.after_execution = count
    t1 = time.monotonic()
    sess.run([hook])
    t2 = time.monotonic()

    if not outcome.get("returned"):
        print(f"bochs_call: {outcome.get('fault', 'the run stopped without returning')}", file=sys.stderr)
        return 1
    written = 0
    for gpa, before in original.items():
        after = bytes(bochscpu.memory.phy_read(gpa, PAGE))
        if after == before:
            continue
        written += 1
        i = 0
        while i < PAGE:
            if after[i] == before[i]:
                i += 1
                continue
            j = i
            while j < PAGE and after[j] != before[j]:
                j += 1
            mem.seek(va_of[gpa] + i)
            mem.write(after[i:j])
            i = j
    report = {
        "pages_mapped": len(va_of),
        "pages_read": len(original),
        "pages_written": written,
        "setup_s": round(t1 - t0, 3),
        "run_s": round(t2 - t1, 3),
        "write_back_s": round(time.monotonic() - t2, 3),
    }
    if counting:
        report["instructions"] = executed[0]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
