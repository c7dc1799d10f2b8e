using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>io_uring's submission queue entry (struct io_uring_sqe, 64 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
internal struct Sqe
{
    [FieldOffset(0)] public byte Opcode;
    [FieldOffset(1)] public byte Flags;
    [FieldOffset(2)] public ushort IoPrio;
    [FieldOffset(4)] public int Fd;
    [FieldOffset(8)] public ulong Off;
    [FieldOffset(16)] public ulong Addr;
    [FieldOffset(24)] public uint Len;
    [FieldOffset(28)] public uint OpFlags;
    [FieldOffset(32)] public ulong UserData;
    [FieldOffset(40)] public ushort BufIndex;
    [FieldOffset(42)] public ushort Personality;
    [FieldOffset(44)] public uint FileIndex;
    [FieldOffset(48)] public ulong Addr3;
    [FieldOffset(56)] public ulong Pad;
}

/// <summary>io_uring's completion queue entry (struct io_uring_cqe, 16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct Cqe
{
    public ulong UserData;
    public int Res;
    public uint Flags;
}

/// <summary>struct io_uring_params (120 bytes): what setup is asked for and what the kernel answers.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct RingParams
{
    public uint SqEntries;
    public uint CqEntries;
    public uint Flags;
    public uint SqThreadCpu;
    public uint SqThreadIdle;
    public uint Features;
    public uint WqFd;
    public fixed uint Resv[3];
    // struct io_sqring_offsets
    public uint SqHead, SqTail, SqRingMask, SqRingEntries, SqFlags, SqDropped, SqArray, SqResv1;
    public ulong SqResv2;
    // struct io_cqring_offsets
    public uint CqHead, CqTail, CqRingMask, CqRingEntries, CqOverflow, CqCqes, CqFlags, CqResv1;
    public ulong CqResv2;
}

/// <summary>The constants of linux/io_uring.h the engine uses.</summary>
internal static class RingConstants
{
    public const byte OpNop = 0;
    public const byte OpPollAdd = 6;
    public const byte OpSendMsg = 9;
    public const byte OpAccept = 13;
    public const byte OpAsyncCancel = 14;
    public const byte OpConnect = 16;
    public const byte OpClose = 19;
    public const byte OpRead = 22;
    public const byte OpSend = 26;
    public const byte OpRecv = 27;
    public const byte OpShutdown = 34;
    public const byte OpUringCmd = 46;
    public const byte OpFixedFdInstall = 54;

    /// <summary>Every opcode the engine submits; the probe requires each.</summary>
    public static ReadOnlySpan<byte> Required => [OpPollAdd, OpSendMsg, OpAccept, OpAsyncCancel, OpConnect, OpClose, OpRead, OpSend, OpRecv];

    public static string OpName(byte op) => op switch
    {
        OpPollAdd => "IORING_OP_POLL_ADD",
        OpSendMsg => "IORING_OP_SENDMSG",
        OpAccept => "IORING_OP_ACCEPT",
        OpAsyncCancel => "IORING_OP_ASYNC_CANCEL",
        OpConnect => "IORING_OP_CONNECT",
        OpClose => "IORING_OP_CLOSE",
        OpRead => "IORING_OP_READ",
        OpSend => "IORING_OP_SEND",
        OpRecv => "IORING_OP_RECV",
        _ => $"opcode {op}",
    };

    public const byte SqeFixedFile = 1 << 0;
    public const byte SqeCqeSkipSuccess = 1 << 6;
    public const uint FileIndexAlloc = uint.MaxValue;
    public const uint RegisterFiles2 = 13;
    public const uint RsrcRegisterSparse = 1;
    public const uint SocketUringOpSetsockopt = 3;

    public const uint SetupCqSize = 1u << 3;
    public const uint SetupSubmitAll = 1u << 7;
    public const uint SetupCoopTaskrun = 1u << 8;
    public const uint SetupSingleIssuer = 1u << 12;
    public const uint SetupDeferTaskrun = 1u << 13;

    public const uint FeatSingleMmap = 1u << 0;
    public const uint FeatNoDrop = 1u << 1;
    public const uint FeatExtArg = 1u << 8;
    public const uint FeatCqeSkip = 1u << 11;

    public const uint EnterGetEvents = 1u << 0;
    public const uint EnterExtArg = 1u << 3;

    public const uint RegisterProbe = 8;
    public const uint RegisterSyncCancel = 24;
    public const ushort ProbeOpSupported = 1;

    public const uint CancelAll = 1u << 0;
    public const uint CancelAny = 1u << 2;

    public const ulong OffSqRing = 0;
    public const ulong OffCqRing = 0x8000000;
    public const ulong OffSqes = 0x10000000;

    public const uint PollIn = 0x0001;
}
