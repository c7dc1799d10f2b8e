using System.Net;
using System.Net.Sockets;
using Transport.Winsock.Engines.Sockets;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.AcceptPool;

/// <summary>
/// An accepted socket with what only recycling needs: the reuse disconnect's event args and deadline,
/// both made on the first recycle and kept with the socket for every later one. Receiving and sending
/// belong to the pooled connection object, not to the socket, so a socket that is never recycled (reuse
/// off, an abort) brings no event args of its own.
/// </summary>
internal sealed class ReusableSocket : IDisposable
{
    private SocketDisconnector? _disconnector;
    private SocketDeadline? _deadline;
    private int _disposed;

    public ReusableSocket(Socket socket)
    {
        Socket = socket;
        PoolNode = new LinkedListNode<ReusableSocket>(this);
    }

    /// <summary>Its place in a <see cref="SocketPool"/>, made once with the socket so that pooling it allocates nothing.</summary>
    public LinkedListNode<ReusableSocket> PoolNode { get; }

    public Socket Socket { get; }

    public SocketDisconnector Disconnector => _disconnector ??= new SocketDisconnector();

    /// <summary>The reuse disconnect's deadline.</summary>
    public SocketDeadline Deadline => _deadline ??= new SocketDeadline();

    /// <summary>When its current reuse disconnect started (a Stopwatch timestamp).</summary>
    public long DisconnectStarted { get; set; }

    /// <summary>
    /// Where this socket's last outbound connection went; null for an accepted socket, or one that has not
    /// connected yet. A recycled socket may keep its local port (Windows does), so connecting it there
    /// again would reuse the 4-tuple the server still holds in TIME_WAIT.
    /// </summary>
    public IPEndPoint? LastRemoteEndPoint { get; set; }

    /// <summary>How many connections this socket has carried.</summary>
    public int Connections { get; private set; }

    public void OnAccepted() => Connections++;

    /// <summary>Closes the socket handle, which also ends any operation pending on it; see <see cref="SocketClose"/>.</summary>
    public void Close(bool abortive) => SocketClose.Close(Socket, abortive);

    /// <summary>Closes the socket and frees its recycling state; only once no disconnect is pending.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        Socket.Dispose();
        _disconnector?.Dispose();
        _deadline?.Dispose();
    }
}
