using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Transport.Winsock.Diagnostics;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// The io_uring engine's outbound side: one ring thread of its own, on which each connect is an
/// IORING_OP_CONNECT of a new descriptor and each connection then runs as an accepted one does on the
/// listener's rings (its receive, sends, FIN and close as ring submissions, its pipes' transport side on
/// the ring). The connect continues on the ring thread, so the connection starts there and its first
/// receive is submitted without a hop. Sockets are never recycled here: Linux has no reuse disconnect.
/// </summary>
internal sealed class IoUringConnector : IAsyncDisposable
{
    private readonly RingThread _ring;
    private int _connecting;

    private IoUringConnector(RingThread ring) => _ring = ring;

    /// <summary>Starts the ring thread, or says why io_uring cannot run (null).</summary>
    public static IoUringConnector? TryStart(ILogger logger, out string reason)
    {
        if (!OperatingSystem.IsLinux())
        {
            reason = "io_uring is Linux's";
            return null;
        }

        var probe = IoUringProbe.Result;
        if (!probe.Passed)
        {
            reason = $"the io_uring probe failed: {probe.Reason}";
            return null;
        }

        // What the ring thread logs is written off the ring, as for a listener's.
        var ring = RingThread.TryStart("io_uring outbound", new EngineThreadLogger(logger), out var failure);
        if (ring is null)
        {
            reason = $"making the outbound io_uring ring {failure}";
            return null;
        }

        reason = $"io_uring ({probe.Reason})";
        return new IoUringConnector(ring);
    }

    /// <summary>The ring, the transport scheduler of its connections' pipes.</summary>
    public RingThread Ring => _ring;

    /// <summary>A connection object's engine side on this ring.</summary>
    public IoUringConnectionIo NewIo() => new(_ring);

    /// <summary>
    /// Whether one more connection fits in the ring's completion queue with the connects under way
    /// (<see cref="RingCapacity"/>); when not, the connect goes to the sockets engine, and when the ring has
    /// ended (it failed, or the factory is being disposed), too.
    /// </summary>
    public bool HasRoom => !_ring.IsStopping && _ring.HasRoomForConnection(Volatile.Read(ref _connecting) + 1);

    /// <summary>
    /// Counts a connect from before its descriptor is made until <see cref="ExitConnect"/> (after its
    /// connection is attached to the ring, or its failure), when the ring has room for it; false (and not
    /// counted) when it has none. Counted first, then checked, so a burst cannot all pass one check.
    /// </summary>
    public bool TryEnterConnect()
    {
        var connecting = Interlocked.Increment(ref _connecting);
        if (!_ring.IsStopping && _ring.HasRoomForConnection(connecting))
        {
            return true;
        }

        Interlocked.Decrement(ref _connecting);
        return false;
    }

    /// <summary>Ends what <see cref="TryEnterConnect"/> counted.</summary>
    public void ExitConnect() => Interlocked.Decrement(ref _connecting);

    /// <summary>Connects under way (counted by <see cref="TryEnterConnect"/>): the ring may not stop under them.</summary>
    public int Connecting => Volatile.Read(ref _connecting);

    /// <summary>
    /// A new TCP descriptor of <paramref name="endpoint"/>'s family connected to it on the ring; the method
    /// continues on the ring thread. A refused, unreachable or timed-out connect throws the
    /// <see cref="SocketException"/> the kernel's errno maps to; <paramref name="cancellationToken"/> cancels
    /// the connect in flight (<see cref="OperationCanceledException"/>). The descriptor is closed on failure.
    /// </summary>
    public async ValueTask<int> ConnectAsync(IPEndPoint endpoint, bool noDelay, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var fd = NewSocket(endpoint.AddressFamily, noDelay);
        ConnectOperation operation;
        try
        {
            operation = new ConnectOperation(_ring);
        }
        catch
        {
            LinuxNative.Close(fd);
            throw;
        }

        try
        {
            using (cancellationToken.UnsafeRegister(static state => ((ConnectOperation)state!).Cancel(), operation))
            {
                // The caller's context is never captured: the connection starts on the ring, and the
                // factory then hops to the thread pool itself.
                await operation.ConnectAsync(fd, endpoint).ConfigureAwait(false);
            }

            return fd;
        }
        catch (Exception ex)
        {
            // The connect is over (its completion came): nothing on the ring refers to the descriptor.
            LinuxNative.Close(fd);
            if (cancellationToken.IsCancellationRequested)
            {
                throw new OperationCanceledException("The connect was canceled.", ex, cancellationToken);
            }

            throw;
        }
        finally
        {
            operation.Dispose();
        }
    }

    private static unsafe int NewSocket(AddressFamily family, bool noDelay)
    {
        var domain = family == AddressFamily.InterNetworkV6 ? LinuxNative.AF_INET6 : LinuxNative.AF_INET;
        var fd = LinuxNative.Socket(domain, LinuxNative.SOCK_STREAM | LinuxNative.SOCK_CLOEXEC, LinuxNative.IPPROTO_TCP);
        if (fd < 0)
        {
            throw Failure(Marshal.GetLastPInvokeError());
        }

        if (noDelay)
        {
            var one = 1;
            if (LinuxNative.SetSockOpt(fd, LinuxNative.IPPROTO_TCP, LinuxNative.TCP_NODELAY, &one, sizeof(int)) != 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                LinuxNative.Close(fd);
                throw Failure(errno);
            }
        }

        return fd;
    }

    private static SocketException Failure(int errno) => new((int)Errors.ToSocketError(errno));

    /// <summary>Stops the ring: connections still on it end as a local abort.</summary>
    public async ValueTask DisposeAsync() => await _ring.StopAsync().ConfigureAwait(false);
}
