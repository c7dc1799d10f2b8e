namespace Transport.Winsock.Listener;

/// <summary>
/// What an I/O engine does for one listener: keeps accepts posted, makes a connection object for each
/// accepted socket and offers it to the listener's queue (closing it when the offer is refused), and
/// owns whatever the engine keeps per listener. The queue, Kestrel's accept loop, unbind and dispose are
/// the listener's, once for every engine.
/// </summary>
internal abstract class ListenerEngine : IAsyncDisposable
{
    /// <summary>Starts accepting.</summary>
    public abstract void Start();

    /// <summary>Stops accepting: the posted accepts end; what is accepted already was offered.</summary>
    public abstract Task StopAsync();

    /// <summary>After the server is done with every connection: frees what the engine still holds.</summary>
    public abstract ValueTask DisposeAsync();
}
