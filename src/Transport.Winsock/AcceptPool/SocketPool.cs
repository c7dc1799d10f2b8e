using System.Diagnostics;
using System.Net;

namespace Transport.Winsock.AcceptPool;

/// <summary>
/// Disconnected, ready-to-use sockets: the listener's, for its accepts, and the outbound factory's, one
/// pool per address family, for its connects. Capped; once disposed it takes nothing back and the caller
/// closes what it offered. An accept takes the socket returned last (any will do, and the most recent is
/// the likeliest still in the caches). A connect takes the oldest socket whose last connection did not
/// go to the same endpoint (<see cref="TryRentFor"/>): a recycled socket may keep its local port, and then
/// it would connect on the 4-tuple the server still holds in TIME_WAIT.
/// </summary>
internal sealed class SocketPool : IDisposable
{
    /// <summary>
    /// Longer than a server's TIME_WAIT lasts: Windows' default is 240 s (TcpTimedWaitDelay), Linux's 60 s.
    /// A socket whose connection to an endpoint ended this long ago can connect there again on any tuple.
    /// </summary>
    internal static readonly TimeSpan TimeWaitOver = TimeSpan.FromSeconds(250);

    // Oldest first. Each socket brings its own node, so returning one allocates nothing.
    private readonly LinkedList<ReusableSocket> _sockets = new();
    private readonly Lock _lock = new();
    private readonly int _capacity;
    private readonly WinsockTransportCounters _counters;
    private bool _disposed;
    private int _count;

    public SocketPool(int capacity, WinsockTransportCounters counters)
    {
        _capacity = capacity;
        _counters = counters;
    }

    /// <summary>The socket returned last, for an accept; null when the pool is empty.</summary>
    public ReusableSocket? TryRent()
    {
        lock (_lock)
        {
            if (_sockets.Last is { } newest)
            {
                return Take(newest);
            }
        }

        return null;
    }

    /// <summary>
    /// The oldest socket whose last connection did not go to <paramref name="endpoint"/>, or ended there
    /// longer ago than any TIME_WAIT lasts (<see cref="TimeWaitOver"/>), for a connect there; null when
    /// there is none (against a single server, once every pooled socket was last used for it lately). The oldest, because the longer ago a socket was last used, the likelier whatever its earlier
    /// connections left in TIME_WAIT has expired.
    /// </summary>
    public ReusableSocket? TryRentFor(IPEndPoint endpoint)
    {
        lock (_lock)
        {
            for (var node = _sockets.First; node is not null; node = node.Next)
            {
                if (!endpoint.Equals(node.Value.LastRemoteEndPoint) || (node.Value.DisconnectStarted != 0 && Stopwatch.GetElapsedTime(node.Value.DisconnectStarted) > TimeWaitOver))
                {
                    return Take(node);
                }
            }
        }

        return null;
    }

    private ReusableSocket Take(LinkedListNode<ReusableSocket> node)
    {
        _sockets.Remove(node);
        Volatile.Write(ref _count, _sockets.Count);
        _counters.PooledSocketsChanged(-1);
        return node.Value;
    }

    /// <summary>Whether the pool holds as many sockets as it may (read without the lock: a hint).</summary>
    public bool IsFull => Volatile.Read(ref _count) >= _capacity;

    /// <summary>Keeps the socket for a later accept or connect. False when the pool is full or disposed.</summary>
    public bool TryReturn(ReusableSocket socket)
    {
        lock (_lock)
        {
            if (_disposed || _sockets.Count >= _capacity)
            {
                return false;
            }

            _sockets.AddLast(socket.PoolNode);
            Volatile.Write(ref _count, _sockets.Count);
        }

        _counters.PooledSocketsChanged(1);
        return true;
    }

    /// <summary>Closes every pooled socket, and goes on taking sockets back (reuse went off, and may come back).</summary>
    public void Clear()
    {
        ReusableSocket[] sockets;
        lock (_lock)
        {
            sockets = [.. _sockets];
            _sockets.Clear();
            Volatile.Write(ref _count, 0);
        }

        _counters.PooledSocketsChanged(-sockets.Length);
        foreach (var socket in sockets)
        {
            socket.Dispose();
        }
    }

    /// <summary>Closes every pooled socket and takes none back from now on.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
        }

        Clear();
    }
}
