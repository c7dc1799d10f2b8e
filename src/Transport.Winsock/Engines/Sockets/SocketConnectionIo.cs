using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Interop;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Engines.Sockets;

/// <summary>
/// The Sockets engine's side of a connection: .NET's <see cref="Socket"/> with reusable event args
/// (AcceptEx, WSARecv, WSASend and DisconnectEx on Windows; .NET's epoll engine elsewhere), and the
/// recycler for sockets that are reused.
/// </summary>
internal sealed class SocketConnectionIo(SocketRecycler recycler, bool inlineContinuations) : ConnectionIo
{
    private readonly SocketReceiver _receiver = new(inlineContinuations);
    private readonly SocketSender _sender = new(inlineContinuations);
    private Socket _socket = null!;
    // The socket's recycling state while sockets are reused; null when this socket will only be closed.
    private ReusableSocket? _reusable;
    // Set once an application asked for the socket (IConnectionSocketFeature): it may hold it, so the
    // socket is closed at the end, never recycled for another connection.
    private bool _exposed;

    /// <summary>The socket this connection runs on now; internal for tests (no application may hold it).</summary>
    internal Socket Socket => _socket;

    public override EndPoint? LocalEndPoint => TryGetEndPoint(local: true);

    public override EndPoint? RemoteEndPoint => TryGetEndPoint(local: false);

    public void Attach(Socket socket, ReusableSocket? reusable)
    {
        _socket = socket;
        _reusable = reusable;
        _exposed = false;
    }

    public override bool HasSocket => true;

    public override Socket? ExposeSocket()
    {
        _exposed = true;
        return _socket;
    }

    /// <summary>
    /// The local endpoint is asked of the socket for each connection (<see cref="SocketNames"/>): .NET's
    /// cached one can be a recycled socket's previous connection's.
    /// </summary>
    private EndPoint? TryGetEndPoint(bool local)
    {
        try
        {
            return local ? SocketNames.LocalEndPoint(_socket) : _socket.RemoteEndPoint;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            return null;
        }
    }

    public override ValueTask<int> WaitForDataAsync() => _receiver.WaitForDataAsync(_socket);

    public override ValueTask<int> ReceiveAsync(Memory<byte> buffer) => _receiver.ReceiveAsync(_socket, buffer);

    public override ValueTask<int> SendAsync(in ReadOnlySequence<byte> buffers) => _sender.SendAsync(_socket, buffers);

    public override void UnsafeOnReceiveCompleted(Action<object?> continuation, object state) => _receiver.UnsafeOnCompleted(continuation, state);

    public override void UnsafeOnSendCompleted(Action<object?> continuation, object state) => _sender.UnsafeOnCompleted(continuation, state);

    public override int TakeReceiveResult() => _receiver.TakeResult();

    public override int TakeSendResult() => _sender.TakeResult();

    public override WinsockErrorAction SendFin() => HalfClose.SendFin(_socket);

    public override void Close(bool abortive) => SocketClose.Close(_socket, abortive);

    public override bool CanRecycle => _reusable is not null && !_exposed && recycler.IsActive;

    public override void Release(bool recycle)
    {
        if (recycle && _reusable is not null)
        {
            recycler.Recycle(_reusable);
        }
        else
        {
            if (_exposed)
            {
                // The application may have a call in flight on it: with the send side's shutdown recorded,
                // .NET unblocks that call without an abortive close (see IoUringConnectionIo.DisposeExposed).
                // After our FIN or an abort this changes nothing on the wire.
                try
                {
                    _socket.Shutdown(SocketShutdown.Send);
                }
                catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                {
                }
            }

            if (_reusable is null)
            {
                _socket.Dispose();
            }
            else
            {
                _reusable.Dispose();
            }
        }

        _socket = null!;
        _reusable = null;
    }

    public override void Dispose()
    {
        _receiver.Dispose();
        _sender.Dispose();
    }
}
