using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Diagnostics;

namespace Transport.Winsock.Teardown;

/// <summary>
/// Recycles the sockets of connections that ended cleanly (FIN both ways): a reuse disconnect
/// (DisconnectEx with TF_REUSE_SOCKET on Windows), bounded in time and in number, then back to the pool.
/// Runs detached from the connection, so a disconnect held up by TIME_WAIT never holds a connection, a
/// thread or the pool; one that fails or times out only costs its socket.
/// </summary>
internal sealed class SocketRecycler : IDisposable
{
    private readonly SocketPool _pool;
    private readonly TimeSpan _disconnectTimeout;
    private readonly int _maxPending;
    private readonly WinsockTransportCounters _counters;
    private readonly ILogger _logger;
    private readonly HashSet<ReusableSocket> _pending = [];
    private readonly Lock _lock = new();
    private readonly Action<object> _onDisconnectExpired;
    private bool _disposed;

    public SocketRecycler(SocketPool pool, TimeSpan disconnectTimeout, int maxPending, WinsockTransportCounters counters, ILogger logger)
    {
        _pool = pool;
        _disconnectTimeout = disconnectTimeout;
        _maxPending = maxPending;
        _counters = counters;
        _logger = logger;
        _onDisconnectExpired = state => OnDisconnectExpired((ReusableSocket)state);
    }

    /// <summary>Takes ownership of a cleanly finished connection's socket: it ends up pooled or closed.</summary>
    public void Recycle(ReusableSocket socket)
    {
        lock (_lock)
        {
            if (_disposed || _pending.Count >= _maxPending)
            {
                socket.Dispose();
                return;
            }

            _pending.Add(socket);
        }

        _counters.PendingDisconnectsChanged(1);
        _ = DisconnectAsync(socket);
    }

    private async Task DisconnectAsync(ReusableSocket socket)
    {
        socket.Deadline.Arm(_disconnectTimeout, _onDisconnectExpired, socket);
        var error = SocketError.Success;
        try
        {
            await socket.Disconnector.DisconnectAsync(socket.Socket);
        }
        catch (SocketException ex)
        {
            error = ex.SocketErrorCode;
        }
        catch (ObjectDisposedException)
        {
            error = SocketError.OperationAborted;
        }

        if (!socket.Deadline.TryDisarm() || !Release(socket))
        {
            // The timeout or Dispose got there first and has already closed and counted the socket;
            // the operation has ended now, so its event args can go too.
            socket.Dispose();
            return;
        }

        if (error != SocketError.Success)
        {
            _counters.DisconnectFailure();
            _logger.DisconnectFailed(error);
            socket.Dispose();
        }
        else if (!_pool.TryReturn(socket))
        {
            socket.Dispose();
        }
    }

    private void OnDisconnectExpired(ReusableSocket socket)
    {
        if (!Release(socket))
        {
            return;
        }

        _counters.DisconnectTimeout();
        _logger.DisconnectTimedOut(_disconnectTimeout);
        // Closing the handle cancels the disconnect where the platform can; where it cannot (Wine), the
        // operation is abandoned with its socket.
        socket.Close(abortive: false);
    }

    private bool Release(ReusableSocket socket)
    {
        lock (_lock)
        {
            if (!_pending.Remove(socket))
            {
                return false;
            }
        }

        _counters.PendingDisconnectsChanged(-1);
        return true;
    }

    /// <summary>Closes every socket still in a disconnect; each one's pending operation then ends with an error.</summary>
    public void Dispose()
    {
        ReusableSocket[] pending;
        lock (_lock)
        {
            _disposed = true;
            pending = [.. _pending];
            _pending.Clear();
        }

        _counters.PendingDisconnectsChanged(-pending.Length);
        foreach (var socket in pending)
        {
            socket.Close(abortive: false);
        }
    }
}
