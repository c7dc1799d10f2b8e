namespace Transport.Winsock.AcceptPool;

/// <summary>
/// The listener's disconnected, ready-to-accept sockets. Last in, first out, capped; once disposed it
/// takes nothing back and the caller closes what it offered.
/// </summary>
internal sealed class SocketPool : IDisposable
{
    private readonly Stack<ReusableSocket> _sockets = new();
    private readonly Lock _lock = new();
    private readonly int _capacity;
    private readonly WinsockTransportCounters _counters;
    private bool _disposed;

    public SocketPool(int capacity, WinsockTransportCounters counters)
    {
        _capacity = capacity;
        _counters = counters;
    }

    public ReusableSocket? TryRent()
    {
        lock (_lock)
        {
            if (_sockets.TryPop(out var socket))
            {
                _counters.PooledSocketsChanged(-1);
                return socket;
            }
        }

        return null;
    }

    /// <summary>Keeps the socket for a later accept. False when the pool is full or disposed.</summary>
    public bool TryReturn(ReusableSocket socket)
    {
        lock (_lock)
        {
            if (_disposed || _sockets.Count >= _capacity)
            {
                return false;
            }

            _sockets.Push(socket);
        }

        _counters.PooledSocketsChanged(1);
        return true;
    }

    public void Dispose()
    {
        ReusableSocket[] sockets;
        lock (_lock)
        {
            _disposed = true;
            sockets = _sockets.ToArray();
            _sockets.Clear();
        }

        _counters.PooledSocketsChanged(-sockets.Length);
        foreach (var socket in sockets)
        {
            socket.Dispose();
        }
    }
}
