using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Engines.Sockets;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.AcceptPool;

/// <summary>
/// Keeps a fixed number of accepts posted on the listening socket. While sockets are recycled, each
/// accepts into a socket from the reuse pool or, when the pool is empty, a new one; otherwise into a
/// socket the runtime makes, as Kestrel's Sockets transport does (nothing is made ahead that would only
/// be closed). An accepted socket is handed off without waiting and the slot reposts at once. A failed
/// accept costs only its socket: the slot discards it and reposts; a fault that is not the connection's
/// (out of handles, an exception of the runtime's) backs off first. An accept into a recycled socket that
/// fails as if the socket had not been recycled is reported to the recycler, which may turn reuse off.
/// </summary>
internal sealed class PostedAccepts
{
    private static readonly TimeSpan FaultBackoff = TimeSpan.FromMilliseconds(50);

    private readonly Socket _listenSocket;
    private readonly System.Net.EndPoint? _endPoint;
    private readonly SocketPool _pool;
    private readonly SocketRecycler _recycler;
    private readonly Action<Socket, ReusableSocket?> _onAccepted;
    private readonly bool _noDelay;
    private readonly WinsockTransportCounters _counters;
    private readonly ILogger _logger;
    private readonly AcceptPause _pause;
    private readonly DescriptorReserve? _reserve;
    private Task[] _slots = [];
    // Windows starts as "not inherited": every accept sets it (see EnsureNoDelay).
    private volatile int _noDelayInherited = OperatingSystem.IsWindows() ? NoDelayNo : NoDelayUnknown;

    private const int NoDelayUnknown = 0;
    private const int NoDelayYes = 1;
    private const int NoDelayNo = 2;
    private volatile bool _stopping;

    public PostedAccepts(
        Socket listenSocket,
        SocketPool pool,
        SocketRecycler recycler,
        Action<Socket, ReusableSocket?> onAccepted,
        bool noDelay,
        WinsockTransportCounters counters,
        ILogger logger,
        AcceptPause pause,
        DescriptorReserve? reserve = null)
    {
        _listenSocket = listenSocket;
        _pause = pause;
        _reserve = reserve;
        _endPoint = listenSocket.LocalEndPoint;
        _pool = pool;
        _recycler = recycler;
        _onAccepted = onAccepted;
        _noDelay = noDelay;
        _counters = counters;
        _logger = logger;
    }

    public void Start(int count)
    {
        _slots = new Task[count];
        for (var i = 0; i < count; i++)
        {
            _slots[i] = RunSlotAsync();
        }
    }

    /// <summary>Closes the listening socket, which cancels every posted accept, and waits for the slots to end.</summary>
    public Task StopAsync()
    {
        _stopping = true;
        _listenSocket.Dispose();
        _pause.Stop();
        return Task.WhenAll(_slots);
    }

    private async Task RunSlotAsync()
    {
        // Start every slot from the thread pool, not on the caller's stack.
        await Task.Yield();

        using var acceptor = new SocketAcceptor();
        await _pause.RunSlotAsync(AcceptOnceAsync, acceptor, () => _stopping);
    }

    /// <summary>
    /// One accept and its outcome: the connection handed off, or the fault dealt with. Its state machine
    /// comes from a pool, so a slot allocates nothing per accept.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask AcceptOnceAsync(SocketAcceptor acceptor)
    {
        if (_reserve is { } reserve)
        {
            if (reserve.IsReached(_pause.IsPaused))
            {
                _pause.OnFault($"the process has {reserve.Reserve} or fewer of its {reserve.Limit} descriptors left (DescriptorReserve)", reserve: true);
                return;
            }

            _pause.OnReserveHasRoom();
        }

        var recycled = false;
        ReusableSocket? reusable = null;
        Socket? accepted = null;
        var error = SocketError.Success;
        Exception? unexpected = null;
        // Until the accept itself completes: only its failure can say the socket was not recycled.
        var accepting = true;
        try
        {
            // Read once per accept: the recycler can turn reuse off at any time (a fallback). Making
            // a socket can fail too (out of handles), which must not end the slot either.
            reusable = _recycler.IsActive ? RentOrCreate(out recycled) : null;
            await acceptor.AcceptAsync(_listenSocket, reusable?.Socket);
            accepted = acceptor.AcceptSocket!;
            acceptor.AcceptSocket = null;
            accepting = false;
            if (_noDelay)
            {
                EnsureNoDelay(accepted);
            }
        }
        catch (SocketException ex)
        {
            error = ex.SocketErrorCode;
        }
        catch (ObjectDisposedException)
        {
            error = SocketError.OperationAborted;
        }
        catch (Exception ex)
        {
            // Thrown before any accept was posted, e.g. .NET refusing a socket to accept into that it
            // does not see as disconnected (InvalidOperationException). The slot must go on.
            unexpected = ex;
            error = SocketError.SocketError;
        }

        if (error == SocketError.Success)
        {
            _pause.OnAccepted();
            if (_reserve is not null)
            {
                DescriptorReserve.OnAccepted();
            }

            if (reusable is null)
            {
                _counters.SocketCreated();
            }
            else
            {
                if (recycled)
                {
                    _counters.SocketReused();
                    _recycler.OnRecycledAccept();
                }

                reusable.OnAccepted();
            }

            _counters.ConnectionAccepted();
            try
            {
                _onAccepted(accepted!, reusable);
            }
            catch (Exception ex)
            {
                // Not a fault of the slot's: it goes on; the connection is lost, and said so.
                _logger.AcceptFailed(_endPoint, ex);
                if (reusable is null)
                {
                    accepted?.Dispose();
                }
                else
                {
                    reusable.Dispose();
                }
            }

            return;
        }

        // The socket may be half-way through an accept or not recycled properly: never reuse it. One
        // the runtime made for a failed accept is closed too.
        if (reusable is null)
        {
            (accepted ?? acceptor.AcceptSocket)?.Dispose();
        }
        else
        {
            reusable.Dispose();
        }

        acceptor.AcceptSocket = null;
        if (_stopping)
        {
            return;
        }

        if (recycled && accepting && (unexpected is InvalidOperationException || IsNotRecycled(error)))
        {
            // Only this socket is bad; the next accept goes into another one at once.
            var failure = unexpected?.Message ?? error.ToString();
            _logger.RecycledAcceptFailed(_endPoint, failure);
            _recycler.OnRecycledAcceptFailed(failure);
            return;
        }

        if (IsOutOfResources(error))
        {
            // Every slot would fail alike: the listener pauses them all (AcceptPause).
            _pause.OnFault($"accepts fail with {error}", reserve: false);
            return;
        }

        if (unexpected is not null)
        {
            _logger.AcceptFailed(_endPoint, unexpected);
        }
        else
        {
            _logger.AcceptFault(_endPoint, error);
        }

        if (unexpected is not null || !IsPerConnectionFault(error))
        {
            // A fault of this slot's own, or one not known to concern a single connection: give the system a moment instead of spinning.
            await Task.Delay(FaultBackoff);
        }
    }

    /// <summary>
    /// TCP_NODELAY on accepted sockets. On Windows every accept sets it, as Kestrel's Sockets transport
    /// does: whether an accepted socket inherits it from the listening socket is undocumented there, and a
    /// socket accepted into again and a new one need not behave alike. Elsewhere the kernel copies it from
    /// the listening socket into every accepted one (Linux does), which saves a system call per
    /// connection: the first accept checks that it was inherited, and if not, every accept sets it.
    /// </summary>
    private void EnsureNoDelay(Socket socket)
    {
        var inherited = _noDelayInherited;
        if (inherited == NoDelayUnknown)
        {
            inherited = socket.NoDelay ? NoDelayYes : NoDelayNo;
            _noDelayInherited = inherited;
        }

        if (inherited == NoDelayNo)
        {
            socket.NoDelay = true;
        }
    }

    private ReusableSocket RentOrCreate(out bool recycled)
    {
        var socket = _pool.TryRent();
        recycled = socket is not null;
        if (socket is not null)
        {
            return socket;
        }

        _counters.SocketCreated();
        return new ReusableSocket(new Socket(_listenSocket.AddressFamily, SocketType.Stream, ProtocolType.Tcp));
    }

    /// <summary>
    /// An accept into a recycled socket that fails with one of these says the socket was not really
    /// recycled (Apache httpd's mpm_winnt reads WSAEINVAL and WSAENOTSOCK so); it counts toward the fallback.
    /// </summary>
    internal static bool IsNotRecycled(SocketError error) => error is SocketError.InvalidArgument or SocketError.NotSocket;

    /// <summary>Out of descriptors or buffers: EMFILE and ENFILE (WSAEMFILE), ENOBUFS and ENOMEM (WSAENOBUFS).</summary>
    internal static bool IsOutOfResources(SocketError error) => error is SocketError.TooManyOpenSockets or SocketError.NoBufferSpaceAvailable;

    // Faults that concern one connection or one socket, after which the next accept is expected to work.
    private static bool IsPerConnectionFault(SocketError error) => error is
        SocketError.ConnectionReset or
        SocketError.ConnectionAborted or
        SocketError.InvalidArgument or
        SocketError.NotConnected or
        SocketError.OperationAborted or
        SocketError.Interrupted;
}
