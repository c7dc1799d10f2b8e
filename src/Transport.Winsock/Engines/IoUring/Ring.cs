namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// One io_uring instance: the mapped submission and completion rings. Not thread-safe: one thread (the
/// ring's own, see <see cref="RingThread"/>) prepares entries, submits and reaps. The kernel's side of
/// each ring index is read with acquire and ours published with release semantics (Volatile), as
/// liburing's smp_load_acquire / smp_store_release do.
/// </summary>
internal sealed unsafe partial class Ring : IDisposable
{
    private readonly int _fd;
    private readonly nint _sqRing;
    private readonly nuint _sqRingSize;
    private readonly nint _cqRing;
    private readonly nuint _cqRingSize;
    private readonly nint _sqesMap;
    private readonly nuint _sqesSize;
    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint _sqMask;
    private readonly uint _sqEntries;
    private readonly Sqe* _sqes;
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint _cqMask;
    private readonly Cqe* _cqes;
    private uint _sqLocalTail;
    private bool _disposed;

    private Ring(int fd, in RingParams p)
    {
        _fd = fd;
        Features = FeaturesFault?.Invoke(p.Features) ?? p.Features;
        Flags = p.Flags;
        _sqRingSize = p.SqArray + p.SqEntries * sizeof(uint);
        _cqRingSize = p.CqCqes + p.CqEntries * (uint)sizeof(Cqe);
        var single = (p.Features & RingConstants.FeatSingleMmap) != 0;
        if (single)
        {
            _sqRingSize = _cqRingSize = Math.Max(_sqRingSize, _cqRingSize);
        }

        try
        {
            _sqRing = Map(fd, _sqRingSize, RingConstants.OffSqRing);
            _cqRing = single ? _sqRing : Map(fd, _cqRingSize, RingConstants.OffCqRing);
            _sqesSize = p.SqEntries * (uint)sizeof(Sqe);
            _sqesMap = Map(fd, _sqesSize, RingConstants.OffSqes);
        }
        catch
        {
            Unmap();
            LinuxNative.Close(fd);
            throw;
        }

        var sq = (byte*)_sqRing;
        _sqHead = (uint*)(sq + p.SqHead);
        _sqTail = (uint*)(sq + p.SqTail);
        _sqMask = *(uint*)(sq + p.SqRingMask);
        _sqEntries = *(uint*)(sq + p.SqRingEntries);
        _sqes = (Sqe*)_sqesMap;
        // The indirection array maps slot i to entry i once and for all: entries are used in ring order.
        var array = (uint*)(sq + p.SqArray);
        for (uint i = 0; i < _sqEntries; i++)
        {
            array[i] = i;
        }

        _sqLocalTail = *_sqTail;
        var cq = (byte*)_cqRing;
        _cqHead = (uint*)(cq + p.CqHead);
        _cqTail = (uint*)(cq + p.CqTail);
        _cqMask = *(uint*)(cq + p.CqRingMask);
        _cqes = (Cqe*)(cq + p.CqCqes);
        CqEntries = p.CqEntries;
    }

    /// <summary>What the kernel's ring offers (IORING_FEAT_*).</summary>
    public uint Features { get; }

    /// <summary>The setup flags the ring was made with.</summary>
    public uint Flags { get; }

    public uint CqEntries { get; }

    public int Fd => _fd;

    /// <summary>
    /// Sets up a ring, trying the cheapest task-running mode first: DEFER_TASKRUN (6.1), then COOP_TASKRUN
    /// (5.19), then neither. Returns the errno of the last refusal when none could be made.
    /// </summary>
    public static Ring? TryCreate(uint entries, uint cqEntries, out int errno)
    {
        ReadOnlySpan<uint> modes =
        [
            RingConstants.SetupSingleIssuer | RingConstants.SetupDeferTaskrun,
            RingConstants.SetupSingleIssuer | RingConstants.SetupCoopTaskrun,
            RingConstants.SetupCoopTaskrun,
            0,
        ];
        errno = 0;
        foreach (var mode in modes)
        {
            var p = new RingParams { Flags = mode | RingConstants.SetupCqSize | RingConstants.SetupSubmitAll, CqEntries = cqEntries };
            var fd = (int)Setup(entries, &p, out errno);
            if (fd >= 0)
            {
                return new Ring(fd, p);
            }

            // EINVAL: this kernel lacks the flag; anything else (EPERM, ENOSYS, ENOMEM) will not change.
            if (errno != LinuxNative.EINVAL)
            {
                return null;
            }
        }

        return null;
    }

    /// <summary>Whether a ring of two entries can be set up with exactly <paramref name="flags"/> (closed at once).</summary>
    public static bool SetsUpWith(uint flags)
    {
        var p = new RingParams { Flags = flags, CqEntries = 4 };
        var fd = Setup(2, &p, out _);
        if (fd < 0)
        {
            return false;
        }

        LinuxNative.Close((int)fd);
        return true;
    }

    /// <summary>The seam where tests make a ring report an older kernel's features (IORING_FEAT_*).</summary>
    internal static Func<uint, uint>? FeaturesFault { get; set; }

    /// <summary>The seam where tests inject a refused setup (seccomp, io_uring_disabled, an old kernel): the errno for the flags asked for, or 0.</summary>
    internal static Func<uint, int>? SetupFault { get; set; }

    private static long Setup(uint entries, RingParams* p, out int errno)
    {
        if (SetupFault?.Invoke(p->Flags) is int fault and not 0)
        {
            errno = fault;
            return -1;
        }

        var fd = LinuxNative.Syscall3(LinuxNative.SysIoUringSetup, entries, (long)p, 0);
        errno = fd < 0 ? LinuxNative.Errno : 0;
        return fd;
    }

    private static nint Map(int fd, nuint size, ulong offset)
    {
        var address = LinuxNative.Mmap(0, size, LinuxNative.PROT_READ | LinuxNative.PROT_WRITE, LinuxNative.MAP_SHARED | LinuxNative.MAP_POPULATE, fd, (long)offset);
        if (address == LinuxNative.MapFailed)
        {
            throw new IOException($"mmap of the io_uring ring failed: {LinuxNative.ErrnoName(LinuxNative.Errno)}.");
        }

        return address;
    }

    /// <summary>
    /// The next free submission entry, zeroed, or null when the queue is full (submit, then ask again).
    /// </summary>
    public Sqe* TryGetSqe()
    {
        if (_disposed)
        {
            return null;
        }

        var head = Volatile.Read(ref *_sqHead);
        if (_sqLocalTail - head >= _sqEntries)
        {
            return null;
        }

        var sqe = &_sqes[_sqLocalTail & _sqMask];
        *sqe = default;
        _sqLocalTail++;
        return sqe;
    }

    /// <summary>
    /// For a ring about to be closed: the entries prepared and never taken by the kernel, withdrawn (the
    /// kernel reads only what lies between its head and our tail, and only in an enter), so that their
    /// owners can end them as never submitted.
    /// </summary>
    public List<Sqe> TakeUnsubmitted()
    {
        var taken = new List<Sqe>();
        if (_disposed)
        {
            return taken;
        }

        var head = Volatile.Read(ref *_sqHead);
        for (var index = head; index != _sqLocalTail; index++)
        {
            taken.Add(_sqes[index & _sqMask]);
        }

        _sqLocalTail = head;
        Volatile.Write(ref *_sqTail, head);
        return taken;
    }

    /// <summary>Entries prepared and not yet taken by the kernel (its head has not passed them).</summary>
    public uint Unsubmitted => _sqLocalTail - Volatile.Read(ref *_sqHead);

    /// <summary>
    /// Publishes the prepared entries and enters the kernel: submits them, runs the ring's task work and,
    /// with <paramref name="wait"/>, sleeps until a completion arrives, for at most
    /// <paramref name="timeoutMs"/> when one is given (IORING_ENTER_EXT_ARG, 5.11: -ETIME when it ran out).
    /// Returns 0 or a negative errno (EINTR is retried; EBUSY and EAGAIN, a full completion queue, are the
    /// caller's to reap first). What the kernel took is read from its head of the queue.
    /// </summary>
    public int Enter(bool wait, int timeoutMs = Timeout.Infinite)
    {
        if (_disposed)
        {
            return -LinuxNative.EBADF;
        }

        Volatile.Write(ref *_sqTail, _sqLocalTail);
        var flags = RingConstants.EnterGetEvents;
        // struct __kernel_timespec, and struct io_uring_getevents_arg { sigmask, sigmask_sz, min_wait_usec, ts }.
        var timespec = stackalloc long[2];
        var arg = stackalloc ulong[3];
        long argSize = 0;
        if (wait && timeoutMs >= 0)
        {
            timespec[0] = timeoutMs / 1000;
            timespec[1] = timeoutMs % 1000 * 1_000_000L;
            arg[0] = 0;
            arg[1] = 0;
            arg[2] = (ulong)timespec;
            argSize = 24;
            flags |= RingConstants.EnterExtArg;
        }

        while (true)
        {
            var result = LinuxNative.Syscall6(LinuxNative.SysIoUringEnter, _fd, Unsubmitted, wait ? 1 : 0, flags, argSize == 0 ? 0 : (long)arg, argSize);
            if (result >= 0)
            {
                return 0;
            }

            var errno = LinuxNative.Errno;
            if (errno == LinuxNative.EINTR)
            {
                continue;
            }

            return -errno;
        }
    }

    /// <summary>The completions the kernel has posted and we have not consumed: a span over the ring.</summary>
    public bool TryPeek(out Cqe cqe)
    {
        if (_disposed)
        {
            cqe = default;
            return false;
        }

        var head = *_cqHead;
        if (head == Volatile.Read(ref *_cqTail))
        {
            cqe = default;
            return false;
        }

        cqe = _cqes[head & _cqMask];
        return true;
    }

    /// <summary>Consumes the completion <see cref="TryPeek"/> returned, freeing its slot for the kernel.</summary>
    public void Advance() => Volatile.Write(ref *_cqHead, *_cqHead + 1);

    private void Unmap()
    {
        if (_sqesMap != 0)
        {
            LinuxNative.Munmap(_sqesMap, _sqesSize);
        }

        if (_cqRing != 0 && _cqRing != _sqRing)
        {
            LinuxNative.Munmap(_cqRing, _cqRingSize);
        }

        if (_sqRing != 0)
        {
            LinuxNative.Munmap(_sqRing, _sqRingSize);
        }
    }

    /// <summary>Unmaps the rings and closes the ring, which cancels whatever is still in flight.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        Unmap();
        LinuxNative.Close(_fd);
    }
}
