using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Transport.Winsock.Connections;
using Transport.Winsock.Interop;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// The io_uring engine's side of a connection: a plain descriptor the ring accepted (or, as a measured
/// variant, a slot of its registered file table: <see cref="IoUringVariants"/>), a receive operation
/// registered once with the ring thread the connection object belongs to, a send operation lent by that
/// ring for each send (<see cref="RingThread.RentSend"/>), and the FIN and the
/// close as ring submissions. Everything that reaches the descriptor goes through the ring thread in
/// submission order, so a close can never overtake an entry prepared for the same descriptor, and no
/// entry can meet the descriptor number after another connection got it.
/// </summary>
internal sealed class IoUringConnectionIo : ConnectionIo
{
    private static readonly Action<object?> s_close = static state => ((CloseRequest)state!).Run();
    private static readonly Action<object?> s_fin = static state => ((FinRequest)state!).Run();

    private readonly RingThread _ring;
    // Replaced when retired (a lost completion, or one the kernel still held as its ring ended).
    private ReceiveOperation _receive;
    // The send lent for the send under way, from SendAsync until its result is taken; else null.
    private SendOperation? _send;
    private bool _fixed;
    // Set on the ring thread once this connection's FIN went to the ring: a second SendFin (an abort
    // with FinOnError after the FIN) must not put another shutdown beside it (ring thread only).
    private bool _finPrepared;
    private int _fd = -1;
    private EndPoint? _local;
    private EndPoint? _remote;
    // Bumped by every Attach: tells a close asked for by this object's previous connection from its current one's.
    private int _attached;
    // Set on the ring thread once the descriptor's close is submitted: nothing more may be prepared for it.
    private bool _fdClosed;
    private volatile bool _closeRequested;
    // The socket an application asked for (IConnectionSocketFeature): a duplicate of the descriptor, so
    // that whatever it holds can never meet the number after another connection got it.
    private Socket? _exposed;

    public IoUringConnectionIo(RingThread ring)
    {
        _ring = ring;
        _receive = new ReceiveOperation(ring, this);
    }

    /// <summary>Whether <see cref="Fd"/> is a direct descriptor (a slot of the ring's file table).</summary>
    internal bool IsFixed => _fixed;

    public RingThread Ring => _ring;

    /// <summary>The descriptor, while the connection has one; internal for tests.</summary>
    internal int Fd => _fd;

    /// <summary>Whether no entry may be prepared for the descriptor any more (ring thread only).</summary>
    internal bool FdClosed => _fdClosed;

    public void Attach(int fd, bool isFixed, EndPoint? local, EndPoint? remote)
    {
        // A retired operation is never used again: it stays registered (and what it pinned rooted) for
        // good, and this object carries its next connection on a new one. (A retired send is never lent again.)
        if (_receive.Retired)
        {
            _receive = new ReceiveOperation(_ring, this);
        }

        _fd = fd;
        _fixed = isFixed;
        _finPrepared = false;
        _local = local;
        _remote = remote;
        _attached++;
        _fdClosed = false;
        _closeRequested = false;
        _ring.OnConnectionAttached();
    }

    public override bool CompletesOnEngineThread => true;

    /// <summary>A plain descriptor can be shown; a slot of a registered file table (a variant) cannot.</summary>
    public override bool HasSocket => !_fixed;

    /// <summary>
    /// A <see cref="Socket"/> over a duplicate of the descriptor (F_DUPFD_CLOEXEC), made when first asked
    /// for and disposed before the connection's own descriptor closes: a call still in flight on it holds
    /// the duplicate open, so it reaches this connection's socket and never a later one that got the
    /// number. Options set through it (TCP_NODELAY, keep-alive, TCP_INFO reads) apply to the connection's
    /// socket; I/O through it would race the ring's and is the application's to avoid.
    /// </summary>
    public override Socket? ExposeSocket()
    {
        if (_fixed || _fd < 0 || _closeRequested)
        {
            return null;
        }

        if (_exposed is null)
        {
            var duplicate = LinuxNative.DuplicateDescriptor(_fd);
            if (duplicate < 0)
            {
                // The connection is alive, only out of descriptors (EMFILE) or the like: say that, not "ended".
                var errno = Marshal.GetLastPInvokeError();
                throw new IOException($"The connection's socket could not be duplicated for IConnectionSocketFeature (fcntl F_DUPFD_CLOEXEC): {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
            }

            var handle = new SafeSocketHandle(duplicate, ownsHandle: true);
            try
            {
                _exposed = new Socket(handle);
            }
            catch (SocketException)
            {
                // Not Dispose (abortive, and its finalizer would close the number again, by then maybe
                // another connection's): the handle lets go, and the duplicate closes here, once.
                handle.SetHandleAsInvalid();
                LinuxNative.Close(duplicate);
                return null;
            }
        }

        return _exposed;
    }

    /// <summary>Disposes the application's socket, if it asked for one, before the descriptor's close.</summary>
    /// <remarks>
    /// On a graceful end the send side is shut down through it first: .NET closes a socket with a call
    /// still in flight on it by unblocking that call, abortively (SO_LINGER 0, shared with the connection's
    /// descriptor) unless a shutdown of the send side was recorded, which would turn the connection's FIN
    /// into an RST and cut its response short.
    /// </remarks>
    private void DisposeExposed(bool abortive = false)
    {
        if (Interlocked.Exchange(ref _exposed, null) is not { } exposed)
        {
            return;
        }

        if (!abortive)
        {
            try
            {
                exposed.Shutdown(SocketShutdown.Send);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
            }
        }

        exposed.Dispose();
    }

    public override EndPoint? LocalEndPoint => _local;

    public override EndPoint? RemoteEndPoint => _remote;

    public override ValueTask<int> WaitForDataAsync() => _receive.PollAsync();

    public override ValueTask<int> ReceiveAsync(Memory<byte> buffer) => _receive.ReceiveAsync(buffer);

    public override ValueTask<int> SendAsync(in ReadOnlySequence<byte> buffers)
    {
        // One send at a time a connection (its send loop): the field is this send's until its result is taken.
        var send = _ring.RentSend(this);
        _send = send;
        return send.SendAsync(buffers);
    }

    /// <summary>The lent send goes back to its ring once its result was taken.</summary>
    internal void OnSendReturned(SendOperation send)
    {
        if (ReferenceEquals(_send, send))
        {
            _send = null;
        }
    }

    public override void UnsafeOnReceiveCompleted(Action<object?> continuation, object state) => _receive.UnsafeOnCompleted(continuation, state);

    public override void UnsafeOnSendCompleted(Action<object?> continuation, object state) => _send!.UnsafeOnCompleted(continuation, state);

    public override int TakeReceiveResult() => _receive.TakeResult();

    public override int TakeSendResult() => _send!.TakeResult();

    public override WinsockErrorAction SendFin()
    {
        if (_fixed || IoUringVariants.RingFin)
        {
            if (_ring.IsCurrent)
            {
                FinOnRing(_attached);
            }
            else
            {
                _ring.Post(s_fin, new FinRequest(this, _attached));
            }

            return WinsockErrorAction.Done;
        }

        // shutdown(2) itself, from whichever thread: the descriptor is open (only the connection's close,
        // which comes after, ends it), and the FIN follows every byte of the sends, which have completed.
        // IORING_OP_SHUTDOWN (above, a variant) always goes to an io-wq worker, a thread hop per connection
        // that measured no cheaper (docs/benchmarks.md), and its close has to wait for it.
        if (LinuxNative.Shutdown(_fd, LinuxNative.SHUT_WR) == 0)
        {
            return WinsockErrorAction.Done;
        }

        return LinuxNative.Errno == LinuxNative.ENOTCONN ? WinsockErrorAction.NotConnected : WinsockErrorAction.Fail;
    }

    public override void Close(bool abortive)
    {
        // Called once per connection, before its Release (the connection's close state sees to both).
        _closeRequested = true;
        DisposeExposed(abortive);
        if (abortive && !_fixed)
        {
            // Now, from whichever thread: the descriptor stays open until the ring closes it below.
            LinuxNative.SetZeroLinger(_fd);
        }

        var slotAbort = abortive && _fixed;
        if (_ring.IsCurrent)
        {
            CloseOnRing(_fd, _fixed, _attached, slotAbort);
        }
        else
        {
            _ring.Post(s_close, new CloseRequest(this, _fd, _fixed, _attached, slotAbort));
        }
    }

    /// <summary>
    /// On the ring thread: cancels what is in flight for the connection that asked (unless this object
    /// carries another one by now), then closes its descriptor; the kernel sends the RST or the FIN once
    /// the last canceled operation lets go of it.
    /// </summary>
    private void CloseOnRing(int fd, bool isFixed, int attached, bool slotAbort)
    {
        if (attached == _attached)
        {
            if (_fdClosed)
            {
                return;
            }

            _fdClosed = true;
            if (_receive.InFlight)
            {
                _ring.Cancel(_receive.CurrentUserData);
            }

            // The send lent to this connection, if one is in the kernel: a send back with the ring (or lent
            // to another connection by now) is not this one's to cancel.
            if (_send is { } send && send.InFlight && ReferenceEquals(send.Owner, this))
            {
                _ring.Cancel(send.CurrentUserData);
            }
        }

        _ring.CloseDescriptor(fd, isFixed, slotAbort);
    }

    private void FinOnRing(int attached)
    {
        // The shutdown's result is not waited for (SendFin has answered Done): an ENOTCONN only means the
        // peer is gone, which the receive side reports. A stopping ring sends no FIN; the close ends it.
        if (attached != _attached || _fdClosed || _finPrepared || _ring.IsStopping)
        {
            return;
        }

        var fin = _ring.RentFin();
        if (fin.Prepare(_fd, _fixed))
        {
            _finPrepared = true;
        }
        else
        {
            _ring.ReturnFin(fin);
        }
    }

    public override bool CanRecycle => false;

    public override void Release(bool recycle)
    {
        // Both loops are done: nothing of this connection's is in flight any more (its FIN is counted apart).
        _ring.OnConnectionReleased();

        // Descriptors are not recycled: the kernel gives the next accept the lowest free number, much as
        // a fixed-file slot would be taken again. A connection its Close ended has its close under way.
        if (_closeRequested)
        {
            return;
        }

        DisposeExposed();
        if (_ring.IsCurrent)
        {
            CloseOnRing(_fd, _fixed, _attached, slotAbort: false);
        }
        else
        {
            _ring.Post(s_close, new CloseRequest(this, _fd, _fixed, _attached, slotAbort: false));
        }
    }

    public override void Dispose()
    {
        // A send is lent only while one is under way, and none is when the object goes: the ring keeps its own.
        _ring.Unregister(_receive);
    }

    private sealed class FinRequest(IoUringConnectionIo io, int attached)
    {
        public void Run() => io.FinOnRing(attached);
    }

    /// <summary>A close asked for on another thread: it carries its descriptor and connection, as this object may carry the next one before it runs.</summary>
    private sealed class CloseRequest(IoUringConnectionIo io, int fd, bool isFixed, int attached, bool slotAbort)
    {
        public void Run() => io.CloseOnRing(fd, isFixed, attached, slotAbort);
    }
}
