using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Transport.Tests.Infrastructure;

/// <summary>Raw TCP helpers: what a peer observes, FIN (a read of 0) versus RST (a reset error).</summary>
public static class RawClient
{
    public static async Task<Socket> ConnectAsync(IPEndPoint endPoint)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(endPoint, TestContext.Current.CancellationToken);
        return socket;
    }

    /// <summary>Reads until the peer's FIN and returns everything read. A reset throws <see cref="SocketException"/>.</summary>
    public static async Task<byte[]> ReadToFinAsync(Socket socket, TimeSpan timeout)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(timeout);
        var received = new MemoryStream();
        var buffer = new byte[16 * 1024];
        int read;
        while ((read = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token)) > 0)
        {
            received.Write(buffer, 0, read);
        }

        return received.ToArray();
    }

    /// <summary>Closes with a zero linger: the peer gets an RST.</summary>
    public static void Reset(Socket socket)
    {
        socket.LingerState = new LingerOption(true, 0);
        socket.Close();
    }

    public static Task SendAsync(Socket socket, string text)
        => socket.SendAsync(Encoding.ASCII.GetBytes(text), SocketFlags.None, TestContext.Current.CancellationToken).AsTask();
}
