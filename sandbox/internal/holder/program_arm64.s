#include "textflag.h"

// The holder program for arm64: program_amd64.s's steps, the same
// contract (program.go), the same scratch layout. Only system calls,
// relative branches and its own stack; no constant is loaded from a
// literal pool (MOVZ/MOVK build them), so the bytes run wherever they are
// loaded. The kernel preserves every register across a system call but
// R0, its result; R19 holds the step, R27 (the assembler's) is not used.

#define SYS_read	63
#define SYS_write	64
#define SYS_close	57
#define SYS_rt_sigaction	134
#define SYS_capset	91
#define SYS_chroot	51
#define SYS_prctl	167
#define SYS_exit_group	94

#define SIG_IGN	1
#define SIGINT	2
#define SIGTERM	15
#define SIGCHLD	17
#define PR_SET_DUMPABLE	4
#define PR_SET_NAME	15
#define PR_SET_NO_NEW_PRIVS	38

// Scratch space below the stack the kernel set up; the stack pointer
// stays 16-byte aligned (arm64 faults on a misaligned one).
#define SIGACTION	0	// struct sigaction: handler, flags, restorer, mask
#define CAPHDR	32	// version, pid
#define CAPDATA	40	// 2 x (effective, permitted, inheritable), all 0
#define NAME	64	// "tether-holder\0"
#define MSG	80	// the report
#define BUF	96	// what the lifeline reads

// STEP names the step whose system call just returned: one that failed
// (R0, a negative errno, not 0) ends the program.
#define STEP(n)	MOVD $n, R19; CBNZ R0, fail

// IGNORE sets signal sig's disposition to SIG_IGN.
#define IGNORE(sig)	MOVD $SYS_rt_sigaction, R8; MOVD $sig, R0; ADD $SIGACTION, RSP, R1; MOVD $0, R2; MOVD $8, R3; SVC

TEXT ·program(SB),NOSPLIT|NOFRAME,$0
	SUB	$128, RSP, RSP
	MOVD	$SIG_IGN, R4
	MOVD	R4, (SIGACTION+0)(RSP)
	MOVD	ZR, (SIGACTION+8)(RSP)
	MOVD	ZR, (SIGACTION+16)(RSP)
	MOVD	ZR, (SIGACTION+24)(RSP)
	// Children ignored: the kernel reaps the pod's orphans as they exit.
	IGNORE(SIGCHLD)
	STEP(1)
	// The lifeline is the one way to end the holder (and SIGKILL from the
	// shim).
	IGNORE(SIGTERM)
	STEP(2)
	IGNORE(SIGINT)
	STEP(3)
	// Its root and working directory: the empty directory it was started
	// in, not the node's (program_amd64.s says why).
	MOVD	$0x2e, R4	// ".\0"
	MOVD	R4, NAME(RSP)
	MOVD	$SYS_chroot, R8
	ADD	$NAME, RSP, R0
	SVC
	STEP(4)
	// comm would be the descriptor's number the holder was executed from.
	MOVZ	$0x6574, R4	// "tether-h"
	MOVK	$(0x6874<<16), R4
	MOVK	$(0x7265<<32), R4
	MOVK	$(0x682d<<48), R4
	MOVD	R4, (NAME+0)(RSP)
	MOVZ	$0x6c6f, R4	// "older\0\0\0"
	MOVK	$(0x6564<<16), R4
	MOVK	$(0x0072<<32), R4
	MOVD	R4, (NAME+8)(RSP)
	MOVD	$SYS_prctl, R8
	MOVD	$PR_SET_NAME, R0
	ADD	$NAME, RSP, R1
	SVC
	STEP(5)
	MOVD	$SYS_prctl, R8
	MOVD	$PR_SET_NO_NEW_PRIVS, R0
	MOVD	$1, R1
	MOVD	$0, R2
	MOVD	$0, R3
	MOVD	$0, R4
	SVC
	STEP(6)
	// Non-dumpable: its /proc entries stay closed to the pod's processes.
	MOVD	$SYS_prctl, R8
	MOVD	$PR_SET_DUMPABLE, R0
	MOVD	$0, R1
	SVC
	STEP(7)
	// Every capability dropped.
	MOVZ	$0x0522, R4	// _LINUX_CAPABILITY_VERSION_3, pid 0
	MOVK	$(0x2008<<16), R4
	MOVD	R4, CAPHDR(RSP)
	MOVD	ZR, (CAPDATA+0)(RSP)
	MOVD	ZR, (CAPDATA+8)(RSP)
	MOVD	ZR, (CAPDATA+16)(RSP)
	MOVD	$SYS_capset, R8
	ADD	$CAPHDR, RSP, R0
	ADD	$CAPDATA, RSP, R1
	SVC
	STEP(8)
	MOVD	$0x6b6f, R4	// "ok"
	MOVH	R4, MSG(RSP)
	MOVD	$SYS_write, R8
	MOVD	$4, R0
	ADD	$MSG, RSP, R1
	MOVD	$2, R2
	SVC
	MOVD	$9, R19
	CMP	$2, R0
	BNE	fail
	MOVD	$SYS_close, R8
	MOVD	$4, R0
	SVC

	// Until every write end of the lifeline is closed.
wait:
	MOVD	$SYS_read, R8
	MOVD	$3, R0
	ADD	$BUF, RSP, R1
	MOVD	$16, R2
	SVC
	CMP	$0, R0
	BGT	wait
	CMN	$4, R0	// EINTR
	BEQ	wait
	MOVD	$SYS_exit_group, R8
	MOVD	$0, R0
	SVC

fail:
	NEG	R0, R5
	MOVD	$0x45, R4	// "E"
	MOVB	R4, (MSG+0)(RSP)
	MOVB	R19, (MSG+1)(RSP)
	MOVB	R5, (MSG+2)(RSP)
	MOVD	$SYS_write, R8
	MOVD	$4, R0
	ADD	$MSG, RSP, R1
	MOVD	$3, R2
	SVC
	MOVD	$SYS_exit_group, R8
	MOVD	R19, R0
	SVC

// func programStart() unsafe.Pointer
TEXT ·programStart(SB),NOSPLIT,$0-8
	MOVD	$·program(SB), R0
	MOVD	R0, ret+0(FP)
	RET
