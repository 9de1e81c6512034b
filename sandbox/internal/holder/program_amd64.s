#include "textflag.h"

// The holder program: the whole of a pod's holder process, which is init
// of the pod's pid namespace. It runs without a runtime or a library,
// from the ELF image program.go wraps around these bytes: only system
// calls, relative jumps and its own stack, so the bytes run wherever they
// are loaded. Its contract is program.go's (fd 3 the lifeline, fd 4 the
// report); on a failed step it reports "E", the step and the errno, and
// exits with the step as its status.

#define SYS_read	0
#define SYS_write	1
#define SYS_close	3
#define SYS_rt_sigaction	13
#define SYS_capset	126
#define SYS_chroot	161
#define SYS_prctl	157
#define SYS_exit_group	231

#define SIG_IGN	1
#define SIGINT	2
#define SIGTERM	15
#define SIGCHLD	17
#define PR_SET_DUMPABLE	4
#define PR_SET_NAME	15
#define PR_SET_NO_NEW_PRIVS	38
#define CAP_V3	0x20080522

// Scratch space below the stack the kernel set up (argc, argv, envp, auxv).
#define SIGACTION	0	// struct sigaction: handler, flags, restorer, mask
#define CAPHDR	32	// version, pid
#define CAPDATA	40	// 2 x (effective, permitted, inheritable), all 0
#define NAME	64	// "tether-holder\0"
#define MSG	80	// the report
#define BUF	96	// what the lifeline reads

// STEP names the step whose system call just returned: one that failed
// (AX, a negative errno, not 0) ends the program.
#define STEP(n)	MOVQ $n, R12; TESTQ AX, AX; JNE fail

// IGNORE sets signal sig's disposition to SIG_IGN.
#define IGNORE(sig)	MOVQ $SYS_rt_sigaction, AX; MOVQ $sig, DI; LEAQ SIGACTION(SP), SI; MOVQ $0, DX; MOVQ $8, R10; SYSCALL

TEXT ·program(SB),NOSPLIT|NOFRAME,$0
	SUBQ	$128, SP
	MOVQ	$SIG_IGN, SIGACTION+0(SP)
	MOVQ	$0, SIGACTION+8(SP)
	MOVQ	$0, SIGACTION+16(SP)
	MOVQ	$0, SIGACTION+24(SP)
	// Children ignored: the kernel reaps the pod's orphans as they exit
	// (no zombie waits for the holder).
	IGNORE(SIGCHLD)
	STEP(1)
	// The lifeline is the one way to end the holder (and SIGKILL from the
	// shim): a process of the pod that signals its pid 1 changes nothing.
	IGNORE(SIGTERM)
	STEP(2)
	IGNORE(SIGINT)
	STEP(3)
	// Its root and working directory: the empty directory it was started
	// in (which the shim removes once it is set up), not the node's. A
	// container of the pod given CAP_SYS_PTRACE reaches them through
	// /proc/1/root and /proc/1/cwd, non-dumpable or not.
	MOVW	$0x002e, NAME(SP)	// ".\0"
	MOVQ	$SYS_chroot, AX
	LEAQ	NAME(SP), DI
	SYSCALL
	STEP(4)
	// comm would be the descriptor's number the holder was executed from.
	MOVQ	$0x682d726568746574, AX	// "tether-h"
	MOVQ	AX, NAME+0(SP)
	MOVQ	$0x0000007265646c6f, AX	// "older\0\0\0"
	MOVQ	AX, NAME+8(SP)
	MOVQ	$SYS_prctl, AX
	MOVQ	$PR_SET_NAME, DI
	LEAQ	NAME(SP), SI
	SYSCALL
	STEP(5)
	MOVQ	$SYS_prctl, AX
	MOVQ	$PR_SET_NO_NEW_PRIVS, DI
	MOVQ	$1, SI
	MOVQ	$0, DX
	MOVQ	$0, R10
	MOVQ	$0, R8
	SYSCALL
	STEP(6)
	// Non-dumpable: its /proc entries (descriptors, memory, environment)
	// stay closed to the pod's processes, which see it as their pid 1,
	// unless they have CAP_SYS_PTRACE.
	MOVQ	$SYS_prctl, AX
	MOVQ	$PR_SET_DUMPABLE, DI
	MOVQ	$0, SI
	SYSCALL
	STEP(7)
	// Every capability dropped (the bounding set stays: the holder never
	// executes anything).
	MOVL	$CAP_V3, CAPHDR+0(SP)
	MOVL	$0, CAPHDR+4(SP)
	MOVQ	$0, CAPDATA+0(SP)
	MOVQ	$0, CAPDATA+8(SP)
	MOVQ	$0, CAPDATA+16(SP)
	MOVQ	$SYS_capset, AX
	LEAQ	CAPHDR(SP), DI
	LEAQ	CAPDATA(SP), SI
	SYSCALL
	STEP(8)
	MOVW	$0x6b6f, MSG(SP)	// "ok"
	MOVQ	$SYS_write, AX
	MOVQ	$4, DI
	LEAQ	MSG(SP), SI
	MOVQ	$2, DX
	SYSCALL
	CMPQ	AX, $2
	MOVQ	$9, R12
	JNE	fail
	MOVQ	$SYS_close, AX
	MOVQ	$4, DI
	SYSCALL

	// Until every write end of the lifeline is closed.
wait:
	MOVQ	$SYS_read, AX
	MOVQ	$3, DI
	LEAQ	BUF(SP), SI
	MOVQ	$16, DX
	SYSCALL
	CMPQ	AX, $0
	JGT	wait
	CMPQ	AX, $-4	// EINTR
	JEQ	wait
	MOVQ	$SYS_exit_group, AX
	MOVQ	$0, DI
	SYSCALL

fail:
	NEGQ	AX
	MOVB	$0x45, MSG+0(SP)	// "E"
	MOVB	R12, MSG+1(SP)
	MOVB	AX, MSG+2(SP)
	MOVQ	$SYS_write, AX
	MOVQ	$4, DI
	LEAQ	MSG(SP), SI
	MOVQ	$3, DX
	SYSCALL
	MOVQ	$SYS_exit_group, AX
	MOVQ	R12, DI
	SYSCALL

// func programStart() unsafe.Pointer
TEXT ·programStart(SB),NOSPLIT,$0-8
	LEAQ	·program(SB), AX
	MOVQ	AX, ret+0(FP)
	RET
