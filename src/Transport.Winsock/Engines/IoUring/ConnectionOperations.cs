using System.Buffers;
using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// A connection's receive: IORING_OP_POLL_ADD for POLLIN when waiting for data without a buffer (a
/// zero-length IORING_OP_RECV would return at once, like an end of stream), else IORING_OP_RECV
/// straight into the pipe's memory, pinned while the kernel holds it.
/// </summary>
internal sealed unsafe class ReceiveOperation(RingThread thread, IoUringConnectionIo io) : AwaitableRingOperation(thread)
{
    private Memory<byte> _buffer;
    private MemoryHandle _pin;
    private bool _poll;

    public ValueTask<int> PollAsync()
    {
        _poll = true;
        return Start();
    }

    public ValueTask<int> ReceiveAsync(Memory<byte> buffer)
    {
        _poll = false;
        _buffer = buffer;
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
            _pin = _buffer.Pin();
            sqe->Opcode = RingConstants.OpRecv;
            sqe->Addr = (ulong)_pin.Pointer;
            sqe->Len = (uint)_buffer.Length;
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
            _buffer = default;
        }
    }

    protected override void ReleaseForResubmit()
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
/// </summary>
internal sealed unsafe class SendOperation : AwaitableRingOperation, IDisposable
{
    // A gather list of at most this many segments per submission; a longer sequence goes in several.
    private const int MaxSegments = 64;

    private readonly IoUringConnectionIo _io;
    private readonly MemoryHandle[] _pins = new MemoryHandle[MaxSegments];
    // struct iovec[MaxSegments] and struct msghdr, in native memory for the object's lifetime.
    private readonly nint* _iovecs;
    private readonly byte* _msghdr;
    private ReadOnlySequence<byte> _remaining;
    private int _pinned;
    private int _total;

    public SendOperation(RingThread thread, IoUringConnectionIo io)
        : base(thread)
    {
        _io = io;
        _iovecs = (nint*)NativeMemory.AllocZeroed((nuint)(MaxSegments * 2 * sizeof(nint)));
        _msghdr = (byte*)NativeMemory.AllocZeroed(56);
    }

    public ValueTask<int> SendAsync(in ReadOnlySequence<byte> buffers)
    {
        _remaining = buffers;
        _total = 0;
        return Start();
    }

    protected override bool TryPrepare(out int errno)
    {
        errno = LinuxNative.ECANCELED;
        if (_io.FdClosed)
        {
            return false;
        }

        var sqe = Thread.TryGetSqe();
        if (sqe is null)
        {
            return false;
        }

        sqe->Fd = _io.Fd;
        if (_io.IsFixed)
        {
            sqe->Flags = RingConstants.SqeFixedFile;
        }

        sqe->OpFlags = LinuxNative.MSG_NOSIGNAL;
        if (_remaining.IsSingleSegment)
        {
            var memory = _remaining.First;
            _pins[0] = memory.Pin();
            _pinned = 1;
            sqe->Opcode = RingConstants.OpSend;
            sqe->Addr = (ulong)_pins[0].Pointer;
            sqe->Len = (uint)memory.Length;
        }
        else
        {
            var count = 0;
            foreach (var memory in _remaining)
            {
                if (memory.IsEmpty)
                {
                    continue;
                }

                if (count == MaxSegments)
                {
                    break;
                }

                _pins[count] = memory.Pin();
                _iovecs[count * 2] = (nint)_pins[count].Pointer;
                _iovecs[(count * 2) + 1] = memory.Length;
                count++;
            }

            _pinned = count;
            // struct msghdr: name, namelen, iov (offset 16), iovlen (offset 24), control, controllen, flags.
            new Span<byte>(_msghdr, 56).Clear();
            *(nint*)(_msghdr + 16) = (nint)_iovecs;
            *(nint*)(_msghdr + 24) = count;
            sqe->Opcode = RingConstants.OpSendMsg;
            sqe->Addr = (ulong)_msghdr;
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

    private void Unpin()
    {
        for (var i = 0; i < _pinned; i++)
        {
            _pins[i].Dispose();
            _pins[i] = default;
        }

        _pinned = 0;
    }

    public void Dispose()
    {
        NativeMemory.Free(_iovecs);
        NativeMemory.Free(_msghdr);
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
