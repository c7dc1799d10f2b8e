namespace Transport.Winsock.Engines.IoUring;

/// <summary>The io_uring_register(2) calls the engine makes on a ring: the opcode probe, a sparse file table, the synchronous cancel.</summary>
internal sealed unsafe partial class Ring
{
    /// <summary>IORING_REGISTER_FILES2 with IORING_RSRC_REGISTER_SPARSE: an empty table of <paramref name="count"/> direct descriptors.</summary>
    public int RegisterSparseFiles(uint count)
    {
        // struct io_uring_rsrc_register: nr, flags, resv2, data, tags.
        var reg = stackalloc ulong[4];
        reg[0] = count | ((ulong)RingConstants.RsrcRegisterSparse << 32);
        reg[1] = 0;
        reg[2] = 0;
        reg[3] = 0;
        var result = LinuxNative.Syscall4(LinuxNative.SysIoUringRegister, _fd, RingConstants.RegisterFiles2, (long)reg, 32);
        return result < 0 ? LinuxNative.Errno : 0;
    }

    /// <summary>
    /// IORING_REGISTER_SYNC_CANCEL (6.0) of everything in flight (IORING_ASYNC_CANCEL_ANY | ALL): the kernel
    /// cancels what it can and waits up to <paramref name="timeoutMs"/> for what is running. 0, or a negative
    /// errno: EINVAL before 6.0, ETIME when something was still running at the timeout.
    /// </summary>
    public int SyncCancelAll(int timeoutMs)
    {
        // struct io_uring_sync_cancel_reg: addr, fd, flags, timeout { sec, nsec }, opcode, pad[7], pad2[3]: 64 bytes.
        var reg = stackalloc ulong[8];
        new Span<ulong>(reg, 8).Clear();
        reg[1] = unchecked((uint)-1) | ((ulong)(RingConstants.CancelAny | RingConstants.CancelAll) << 32);
        reg[2] = (ulong)(timeoutMs / 1000);
        reg[3] = (ulong)(timeoutMs % 1000 * 1_000_000L);
        var result = LinuxNative.Syscall4(LinuxNative.SysIoUringRegister, _fd, RingConstants.RegisterSyncCancel, (long)reg, 1);
        return result < 0 ? -LinuxNative.Errno : 0;
    }

    /// <summary>IORING_REGISTER_PROBE: which of <paramref name="ops"/> this kernel lacks, or null when the probe itself fails.</summary>
    public string? MissingOps(ReadOnlySpan<byte> ops, out int errno)
    {
        // struct io_uring_probe (16 bytes) followed by 256 struct io_uring_probe_op (8 bytes each).
        const int Count = 256;
        var buffer = stackalloc byte[16 + Count * 8];
        new Span<byte>(buffer, 16 + Count * 8).Clear();
        var result = LinuxNative.Syscall4(LinuxNative.SysIoUringRegister, _fd, RingConstants.RegisterProbe, (long)buffer, Count);
        errno = result < 0 ? LinuxNative.Errno : 0;
        if (result < 0)
        {
            return null;
        }

        var lastOp = buffer[0];
        var missing = new List<string>();
        foreach (var op in ops)
        {
            var flags = *(ushort*)(buffer + 16 + op * 8 + 2);
            if (op > lastOp || (flags & RingConstants.ProbeOpSupported) == 0)
            {
                missing.Add(RingConstants.OpName(op));
            }
        }

        return string.Join(", ", missing);
    }
}
