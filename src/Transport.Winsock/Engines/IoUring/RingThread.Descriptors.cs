using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// How a ring thread ends descriptors: IORING_OP_CLOSE in submission order, the FIN as IORING_OP_SHUTDOWN
/// (a variant, and always for a direct descriptor) with the close waiting for it, and the slots of a
/// registered file table.
/// </summary>
internal sealed unsafe partial class RingThread
{
    // struct linger { l_onoff = 1, l_linger = 0 }, for IORING_OP_URING_CMD's setsockopt; never freed.
    private static readonly int* s_zeroLinger = CreateZeroLinger();

    private readonly Stack<FinOperation> _fins = new();
    // The descriptors (plain, or slots) with an IORING_OP_SHUTDOWN in flight: see CloseDescriptor.
    private readonly Dictionary<(int Fd, bool Fixed), FinOperation> _finsInFlight = new();
    private int _openSlots;
    // _finsInFlight.Count, for the capacity check, which may run on another thread.
    private int _finCount;

    private static int* CreateZeroLinger()
    {
        var linger = (int*)NativeMemory.AllocZeroed(8);
        linger[0] = 1;
        return linger;
    }

    /// <summary>
    /// On the ring thread: closes <paramref name="fd"/> in submission order, after every entry already
    /// prepared for it (IORING_OP_CLOSE), so none of them can meet a descriptor number reused meanwhile.
    /// </summary>
    public void Close(int fd)
    {
        var sqe = TryGetSqe();
        if (sqe is null)
        {
            // Stopping: what is prepared goes to the kernel first, then the descriptor closes.
            if (Volatile.Read(ref _done) == 0)
            {
                _ring!.Enter(wait: false);
            }

            LinuxNative.Close(fd);
            return;
        }

        sqe->Opcode = RingConstants.OpClose;
        sqe->Fd = fd;
        sqe->UserData = IgnoredUserData;
        sqe->Flags = RingConstants.SqeCqeSkipSuccess;
    }

    /// <summary>Whether the ring has a table of direct descriptors accepts allocate from (<see cref="IoUringVariants.RegisteredFiles"/>).</summary>
    public bool HasFileTable { get; private set; }

    /// <summary>On the ring thread: a FIN operation (<see cref="IoUringVariants.RingFin"/>) from the ring's pool.</summary>
    public FinOperation RentFin() => _fins.TryPop(out var fin) ? fin : new FinOperation(this);

    public void ReturnFin(FinOperation fin) => _fins.Push(fin);

    /// <summary>On the ring thread: a FIN for the descriptor is in flight, and its close waits for it.</summary>
    public void OnFinPrepared(int fd, bool isFixed, FinOperation fin)
    {
        _finsInFlight[(fd, isFixed)] = fin;
        Volatile.Write(ref _finCount, _finsInFlight.Count);
    }

    public void OnFinDone(int fd, bool isFixed, FinOperation fin)
    {
        if (_finsInFlight.TryGetValue((fd, isFixed), out var current) && ReferenceEquals(current, fin))
        {
            _finsInFlight.Remove((fd, isFixed));
            Volatile.Write(ref _finCount, _finsInFlight.Count);
        }
    }

    /// <summary>
    /// On the ring thread: closes a plain or direct descriptor, with SO_LINGER 0 first for a direct one's
    /// abort (<paramref name="slotAbort"/>). A descriptor whose IORING_OP_SHUTDOWN is in flight closes when
    /// that completes: the kernel runs the shutdown on an io-wq worker, which looks the descriptor up
    /// there, so a close before it would let the worker shut down whichever socket got the number next.
    /// </summary>
    public void CloseDescriptor(int fd, bool isFixed, bool slotAbort)
    {
        if (_finsInFlight.Count != 0 && _finsInFlight.TryGetValue((fd, isFixed), out var fin))
        {
            fin.CloseWhenDone(slotAbort);
            return;
        }

        if (isFixed)
        {
            if (slotAbort)
            {
                ZeroLingerSlot(fd);
            }

            CloseSlot(fd);
        }
        else
        {
            Close(fd);
        }
    }

    /// <summary>Slots of the file table that hold a connection's descriptor (accepted, close not yet submitted); for tests.</summary>
    public int OpenSlots => Volatile.Read(ref _openSlots);

    /// <summary>On the ring thread: an accept took a slot.</summary>
    public void OnSlotAccepted() => Volatile.Write(ref _openSlots, _openSlots + 1);

    /// <summary>On the ring thread: closes direct descriptor <paramref name="slot"/> in submission order.</summary>
    public void CloseSlot(int slot)
    {
        Volatile.Write(ref _openSlots, _openSlots - 1);
        var sqe = TryGetSqe();
        if (sqe is null)
        {
            // Stopping: the table goes with the ring.
            return;
        }

        sqe->Opcode = RingConstants.OpClose;
        sqe->FileIndex = (uint)slot + 1;
        sqe->UserData = IgnoredUserData;
        sqe->Flags = RingConstants.SqeCqeSkipSuccess;
    }

    /// <summary>On the ring thread: SO_LINGER 0 on direct descriptor <paramref name="slot"/> (IORING_OP_URING_CMD setsockopt).</summary>
    public void ZeroLingerSlot(int slot)
    {
        var sqe = TryGetSqe();
        if (sqe is null)
        {
            return;
        }

        sqe->Opcode = RingConstants.OpUringCmd;
        sqe->Fd = slot;
        sqe->Flags = RingConstants.SqeFixedFile | RingConstants.SqeCqeSkipSuccess;
        sqe->Off = RingConstants.SocketUringOpSetsockopt;
        sqe->Addr = LinuxNative.SOL_SOCKET | ((ulong)LinuxNative.SO_LINGER << 32);
        sqe->FileIndex = 8;
        sqe->Addr3 = (ulong)s_zeroLinger;
        sqe->UserData = IgnoredUserData;
    }
}
