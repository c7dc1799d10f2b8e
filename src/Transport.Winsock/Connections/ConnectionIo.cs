using System.Buffers;
using System.Net;
using Transport.Winsock.Interop;

namespace Transport.Winsock.Connections;

/// <summary>
/// What an I/O engine does for one pooled connection object: receive, send, the FIN, the close and the
/// hand-off of the socket at the end. Everything the connection means (the pipes, backpressure,
/// ConnectionClosed, who closed first, drain and deferred FIN, abort) is <see cref="WinsockConnection"/>'s
/// and exists once; an engine only moves bytes and ends sockets, as Netty's epoll and io_uring transports
/// sit under one channel. One object carries one connection after another, like its connection object.
/// </summary>
/// <remarks>
/// Failures surface as the connection's loops sort them: a <see cref="System.Net.Sockets.SocketException"/>
/// with the socket error (a reset, a local abort, anything else) or an <see cref="ObjectDisposedException"/>
/// when the socket was closed under the operation. At most one receive and one send are pending at a time.
/// </remarks>
internal abstract class ConnectionIo : IDisposable
{
    /// <summary>
    /// Whether completions continue on a thread of the engine's own (io_uring's ring threads), where no
    /// application callback may run; false when they continue on the thread pool (the sockets engine).
    /// </summary>
    public virtual bool CompletesOnEngineThread => false;

    /// <summary>The accepted socket's local endpoint, or null when it could not be read.</summary>
    public abstract EndPoint? LocalEndPoint { get; }

    /// <summary>The peer's endpoint, or null when it could not be read (a peer that reset at once).</summary>
    public abstract EndPoint? RemoteEndPoint { get; }

    /// <summary>Completes when data (or the peer's FIN) is there to be received, holding no buffer.</summary>
    public abstract ValueTask<int> WaitForDataAsync();

    /// <summary>Receives into <paramref name="buffer"/>; 0 is the peer's FIN.</summary>
    public abstract ValueTask<int> ReceiveAsync(Memory<byte> buffer);

    /// <summary>Sends every byte of <paramref name="buffers"/>, which stay untouched until it completes.</summary>
    public abstract ValueTask<int> SendAsync(in ReadOnlySequence<byte> buffers);

    /// <summary>
    /// Has <paramref name="continuation"/> run with <paramref name="state"/> once the pending receive (or
    /// wait for data) completes, as its awaiter's UnsafeOnCompleted would (no ExecutionContext flows), with
    /// no delegate made for it. Only for one whose ValueTask did not complete at once.
    /// </summary>
    public abstract void UnsafeOnReceiveCompleted(Action<object?> continuation, object state);

    /// <summary>As <see cref="UnsafeOnReceiveCompleted"/>, for the pending send.</summary>
    public abstract void UnsafeOnSendCompleted(Action<object?> continuation, object state);

    /// <summary>
    /// The result of the receive whose continuation <see cref="UnsafeOnReceiveCompleted"/> registered, once
    /// it has run: what awaiting its ValueTask would give (bytes, or the failure thrown). Once per receive.
    /// </summary>
    public abstract int TakeReceiveResult();

    /// <summary>As <see cref="TakeReceiveResult"/>, for the send.</summary>
    public abstract int TakeSendResult();

    /// <summary>Sends the FIN (shutdown of the send side); <see cref="WinsockErrorAction.NotConnected"/> when the peer is gone.</summary>
    public abstract WinsockErrorAction SendFin();

    /// <summary>
    /// Closes the socket now; pending operations end as local aborts. Abortive: an RST (a zero linger);
    /// otherwise whatever the socket's state sends (a FIN, or nothing after one).
    /// </summary>
    public abstract void Close(bool abortive);

    /// <summary>Whether the socket of a clean passive close would be recycled rather than closed.</summary>
    public abstract bool CanRecycle { get; }

    /// <summary>
    /// Both loops are done: the socket is recycled (<paramref name="recycle"/>: a clean passive close whose
    /// socket <see cref="CanRecycle"/>) or closed, or only released when <see cref="Close"/> closed it already.
    /// </summary>
    public abstract void Release(bool recycle);

    /// <summary>
    /// Whether <see cref="ExposeSocket"/> can give this connection a <see cref="System.Net.Sockets.Socket"/>
    /// (IConnectionSocketFeature); false where the connection has no descriptor of its own to show.
    /// </summary>
    public virtual bool HasSocket => false;

    /// <summary>
    /// The socket an application may hold for this connection (IConnectionSocketFeature), made or marked
    /// when first asked for, or null once the connection is closed. Whatever it returns can never reach
    /// another connection: it is disposed when this connection lets its socket go, and a socket that was
    /// asked for is closed at the end, never recycled. Called under the connection's lock, before its
    /// hand-off.
    /// </summary>
    public virtual System.Net.Sockets.Socket? ExposeSocket() => null;

    /// <summary>The connection object leaves its pool: frees what the engine keeps per object.</summary>
    public abstract void Dispose();
}
