using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// A connection's receive: IORING_OP_POLL_ADD for POLLIN when waiting for data without a buffer (a
/// zero-length IORING_OP_RECV would return at once, like an end of stream), else IORING_OP_RECV
/// straight into the pipe's memory, pinned while the kernel holds it.
/// </summary>
internal sealed unsafe class ReceiveOperation(RingThread thread, IoUringConnectionIo io) : AwaitableRingOperation(thread)
{
    // The receive's buffer, pinned from ReceiveAsync until the operation finishes (through a resubmit too).
    private MemoryHandle _pin;
    private int _length;
    private bool _poll;

    public ValueTask<int> PollAsync()
    {
        _poll = true;
        return Start();
    }

    public ValueTask<int> ReceiveAsync(Memory<byte> buffer)
    {
        _poll = false;
        _pin = buffer.Pin();
        _length = buffer.Length;
        return Start();
    }

    protected override bool TryPrepare(out int errno)
    {
        errno = LinuxNative.ECANCELED;
        if (io.FdClosed)
        {
            return false;
        }

        var sqe = Thread.TryGetSqe();
        if (sqe is null)
        {
            return false;
        }

        sqe->Fd = io.Fd;
        if (io.IsFixed)
        {
            sqe->Flags = RingConstants.SqeFixedFile;
        }

        if (_poll)
        {
            sqe->Opcode = RingConstants.OpPollAdd;
            sqe->OpFlags = RingConstants.PollIn;
        }
        else
        {
            sqe->Opcode = RingConstants.OpRecv;
            sqe->Addr = (ulong)_pin.Pointer;
            sqe->Len = (uint)_length;
        }

        sqe->UserData = NextUserData();
        return true;
    }

    // A poll holds no memory: a quarantined one may end its waiter. A receive holds the pipe's buffer.
    protected override bool HoldsCallerMemory => !_poll;

    protected override void Complete(int result, uint flags)
    {
        // A poll's result is the event mask, not a byte count; the receive that follows reads the data.
        Finish(_poll && result > 0 ? 0 : result);
    }

    protected override void OnFinished()
    {
        if (!_poll)
        {
            _pin.Dispose();
            _pin = default;
        }
    }

    // A poll whose completion was lost consumed nothing: armed again. A receive's bytes are gone: it fails.
    protected override void Lost()
    {
        if (_poll)
        {
            SubmitOnRing();
            return;
        }

        base.Lost();
    }
}

/// <summary>
/// A connection's send of a whole <see cref="ReadOnlySequence{T}"/>: IORING_OP_SEND for one segment,
/// IORING_OP_SENDMSG with a gather list for several. A short send (the socket buffer filled) is
/// continued on the ring thread with the rest, so the awaiter resumes once every byte is with the kernel.
/// The gather list is rented for the send alone (<see cref="GatherBlock"/>), and so is the operation
/// itself, from its ring (<see cref="RingThread.RentSend"/>): an idle connection holds neither. It goes back
/// once its connection took the result; a retired one never does.
/// </summary>
internal sealed unsafe class SendOperation(RingThread thread) : AwaitableRingOperation(thread)
{
    private ReadOnlySequence<byte> _remaining;
    private MemoryHandle _pin;
    private GatherBlock? _gather;
    private int _pinned;
    private int _total;

    /// <summary>The connection this send is lent to; set before its submission is posted, cleared as it goes back.</summary>
    public IoUringConnectionIo? Owner { get; set; }

    public ValueTask<int> SendAsync(in ReadOnlySequence<byte> buffers)
    {
        _remaining = buffers;
        _total = 0;
        return Start();
    }

    protected override bool TryPrepare(out int errno)
    {
        errno = LinuxNative.ECANCELED;
        var io = Owner!;
        if (io.FdClosed)
        {
            return false;
        }

        var sqe = Thread.TryGetSqe();
        if (sqe is null)
        {
            return false;
        }

        sqe->Fd = io.Fd;
        if (io.IsFixed)
        {
            sqe->Flags = RingConstants.SqeFixedFile;
        }

        sqe->OpFlags = LinuxNative.MSG_NOSIGNAL;
        if (_remaining.IsSingleSegment)
        {
            var memory = _remaining.First;
            _pin = memory.Pin();
            sqe->Opcode = RingConstants.OpSend;
            sqe->Addr = (ulong)_pin.Pointer;
            sqe->Len = (uint)memory.Length;
        }
        else
        {
            var gather = _gather = GatherBlock.Rent();
            var iovecs = gather.Iovecs;
            var count = 0;
            foreach (var memory in _remaining)
            {
                if (memory.IsEmpty)
                {
                    continue;
                }

                if (count == GatherBlock.MaxSegments)
                {
                    break;
                }

                gather.Pins[count] = memory.Pin();
                // Counted at once: a Pin that throws further on leaves these to Unpin, not pinned for good.
                _pinned = count + 1;
                iovecs[count * 2] = (nint)gather.Pins[count].Pointer;
                iovecs[(count * 2) + 1] = memory.Length;
                count++;
            }

            sqe->Opcode = RingConstants.OpSendMsg;
            sqe->Addr = (ulong)gather.MessageHeader(count);
            sqe->Len = 1;
        }

        sqe->UserData = NextUserData();
        return true;
    }

    protected override void Complete(int result, uint flags)
    {
        Unpin();
        if (result > 0)
        {
            _total += result;
            _remaining = _remaining.Slice(result);
            if (!_remaining.IsEmpty)
            {
                // The rest, at once.
                SubmitOnRing();
                return;
            }

            Finish(_total);
            return;
        }

        Finish(result == 0 ? -LinuxNative.EPIPE : result);
    }

    protected override void OnFinished()
    {
        Unpin();
        _remaining = default;
    }

    protected override void ReleaseForResubmit() => Unpin();

    /// <summary>The connection has the result: the operation goes back to its ring, unless retired.</summary>
    protected override void OnResultTaken()
    {
        Owner?.OnSendReturned(this);
        if (!Retired)
        {
            Thread.ReturnSend(this);
        }
    }

    /// <summary>The kernel is done with the submission (or never had it): its pins and gather list go.</summary>
    private void Unpin()
    {
        _pin.Dispose();
        _pin = default;
        if (_gather is { } gather)
        {
            for (var i = 0; i < _pinned; i++)
            {
                gather.Pins[i].Dispose();
                gather.Pins[i] = default;
            }

            _pinned = 0;
            _gather = null;
            GatherBlock.Return(gather);
        }
    }
}

/// <summary>
/// A gather list for a send of several segments: a pin per segment, and the struct iovec array with its
/// struct msghdr in an array on the pinned object heap (the kernel reads both until the send completes;
/// the GC never moves or frees them while the block is rooted). A send rents one from the pool of the
/// thread it is prepared on (a ring thread: every send is prepared and completed there) and returns it at
/// its completion; the pool keeps up to 64 for the next sends and lets the rest go, so it holds what a burst
/// of concurrent sends needed only until the GC takes it.
/// </summary>
internal sealed unsafe class GatherBlock
{
    /// <summary>Segments per submission; a longer sequence goes in several.</summary>
    public const int MaxSegments = 64;
    // 64 a ring thread (~170 KB): enough for the sends of several segments that a ring has in flight at
    // once under load, so that they do not make and drop pinned arrays at every burst (each dropped one
    // leaves a hole in the pinned object heap until a gen2 collection).
    private const int MaxIdle = 64;
    private const int MessageHeaderSize = 56;

    [ThreadStatic]
    private static Stack<GatherBlock>? t_idle;

    private readonly byte[] _native = GC.AllocateArray<byte>((MaxSegments * 2 * sizeof(nint)) + MessageHeaderSize, pinned: true);

    public MemoryHandle[] Pins { get; } = new MemoryHandle[MaxSegments];

    /// <summary>struct iovec[MaxSegments]: base and length, each a pointer's size.</summary>
    public nint* Iovecs => (nint*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_native));

    /// <summary>struct msghdr over the first <paramref name="count"/> iovecs: name, namelen, iov (offset 16), iovlen (offset 24), control, controllen, flags.</summary>
    public byte* MessageHeader(int count)
    {
        var header = (byte*)Iovecs + (MaxSegments * 2 * sizeof(nint));
        new Span<byte>(header, MessageHeaderSize).Clear();
        *(nint*)(header + 16) = (nint)Iovecs;
        *(nint*)(header + 24) = count;
        return header;
    }

    public static GatherBlock Rent() => t_idle is { } idle && idle.TryPop(out var block) ? block : new GatherBlock();

    public static void Return(GatherBlock block)
    {
        var idle = t_idle ??= new Stack<GatherBlock>();
        if (idle.Count < MaxIdle)
        {
            idle.Push(block);
        }
    }
}

/// <summary>
/// A FIN as IORING_OP_SHUTDOWN (<see cref="IoUringVariants.RingFin"/>, and always for a direct descriptor).
/// The kernel runs it on an io-wq worker, which looks the descriptor up there: a close asked for
/// meanwhile waits for its completion (<see cref="RingThread.CloseDescriptor"/>), so the number or slot
/// cannot be another connection's by then. Pooled per ring, apart from the connection object, which may
/// carry its next connection before this completes.
/// </summary>
internal sealed unsafe class FinOperation(RingThread thread) : RingOperation(thread)
{
    private int _fd;
    private bool _fixed;
    private bool _closeWhenDone;
    private bool _abortive;

    public bool Prepare(int fd, bool isFixed)
    {
        _fd = fd;
        _fixed = isFixed;
        if (!TrySubmit())
        {
            return false;
        }

        _closeWhenDone = false;
        Thread.OnFinPrepared(fd, isFixed, this);
        return true;
    }

    private bool TrySubmit()
    {
        var sqe = Thread.TryGetSqe();
        if (sqe is null)
        {
            return false;
        }

        sqe->Opcode = RingConstants.OpShutdown;
        sqe->Fd = _fd;
        if (_fixed)
        {
            sqe->Flags = RingConstants.SqeFixedFile;
        }

        sqe->Len = LinuxNative.SHUT_WR;
        sqe->UserData = NextUserData();
        return true;
    }

    /// <summary>The same shutdown again, after the resync's cancel ended it; if that cannot be, as completed.</summary>
    protected override void Resubmit()
    {
        if (!TrySubmit())
        {
            Complete(-LinuxNative.ECANCELED, 0);
        }
    }

    /// <summary>The connection's close, to run once the shutdown completed.</summary>
    public void CloseWhenDone(bool abortive)
    {
        _closeWhenDone = true;
        _abortive = abortive;
    }

    protected override void Complete(int result, uint flags)
    {
        Thread.OnFinDone(_fd, _fixed, this);
        if (_closeWhenDone)
        {
            _closeWhenDone = false;
            Thread.CloseDescriptor(_fd, _fixed, _abortive);
        }

        Thread.ReturnFin(this);
    }
}
