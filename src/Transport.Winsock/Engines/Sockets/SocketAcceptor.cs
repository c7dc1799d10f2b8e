using System.Net.Sockets;

namespace Transport.Winsock.Engines.Sockets;

/// <summary>One posted accept: AcceptEx on Windows, into the socket it is given or into one the runtime makes.</summary>
internal sealed class SocketAcceptor : AwaitableSocketEventArgs
{
    /// <summary>Accepts into <paramref name="acceptInto"/>, or, when it is null, into a new socket; either is <see cref="SocketAsyncEventArgs.AcceptSocket"/> after.</summary>
    public ValueTask<int> AcceptAsync(Socket listenSocket, Socket? acceptInto)
    {
        AcceptSocket = acceptInto;
        return Await(listenSocket.AcceptAsync(this));
    }
}
