using System.Net.Sockets;

namespace Transport.Winsock.Io;

/// <summary>One posted accept: AcceptEx on Windows into the socket it is given.</summary>
internal sealed class SocketAcceptor : AwaitableSocketEventArgs
{
    public ValueTask<int> AcceptAsync(Socket listenSocket, Socket acceptInto)
    {
        AcceptSocket = acceptInto;
        return Await(listenSocket.AcceptAsync(this));
    }
}
